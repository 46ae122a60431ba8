"""The spec's "Basic Usage" block, verbatim."""


def test_spec_basic_usage_runs_verbatim():
    import torch
    from safe.models.projectors import AudioProjector
    from safe.models.fusion_adapter import CrossAttentionBlock
    from safe.models.policy import AudioPolicyNetwork

    # Create audio projector
    projector = AudioProjector(
        audio_embed_dim=512,      # CLAP embedding dimension
        llm_hidden_size=768,      # LLM hidden dimension
        num_audio_tokens=8        # Audio tokens to generate
    )

    # Create fusion adapter
    fusion = CrossAttentionBlock(
        hidden_size=768,
        num_attention_heads=12
    )

    # Create RL policy
    policy = AudioPolicyNetwork(
        state_feature_dim=256,
        token_budgets=[0, 4, 8, 12]  # Token budget options
    )

    # Process audio features
    audio_features = torch.randn(2, 512)  # Batch of CLAP features
    audio_tokens = projector(audio_features)

    # Fuse with LLM hidden states
    llm_states = torch.randn(2, 10, 768)
    fused_states = fusion(llm_states, audio_tokens)

    # Get policy decisions
    state_features = torch.randn(2, 256)
    actions = policy.get_actions(state_features)

    assert audio_tokens.shape == (2, 8, 768)
    assert torch.equal(fused_states, llm_states)  # a fresh adapter changes nothing
    assert set(actions.tolist()) <= {0, 4, 8, 12}
