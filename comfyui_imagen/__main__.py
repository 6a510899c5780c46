"""``python -m comfyui_imagen generate PROMPT -o out.png`` (see `comfyui_imagen.cli`)."""
import sys

from .cli import main

sys.exit(main())
