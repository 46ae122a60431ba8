"""The code MLflow runs to rebuild the registered SAFE model (models-from-code).

`safe.tracking.promote` logs this file, not a pickled object: loading `models:/safe-audio-vl@champion` executes it
from the model's artifacts, and it names the model class by import, so no pickled bytes are ever deserialised.
"""

from safe.tracking import serve_safe_model

serve_safe_model()
