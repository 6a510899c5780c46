"""The model-file layer, below `checkpoints` (stages) and `text` (T5), which both read their files through it:

    reader.py     `open_weights(path) -> Weights`: one lazy reader for safetensors (single or sharded) and pickles
                  (``weights_only=True``), tensors either materialised (``read_into``) or memory-mapped (``mapped``)
    gguf.py       GGUF files as `GGUFWeights`: header and metadata parsed here, quantized tensors as raw ``blocks``
    families.py   `identify(keys, metadata)` / `folder_family(folder)`: what a file or folder is, and what to do with it
    discovery.py  what a models folder offers (`scan_folder`, `list_stages`, `list_t5`) and `resolve(name, roots)`
    errors.py     `ModelFileError`, and `raised_as`, which turns it into a package's own error class

It imports neither `checkpoints` nor `text`, and reads no file at import.
"""
from .discovery import WHERE_MODELS_GO, Found, list_stages, list_t5, resolve, scan_folder, weight_files
from .errors import ModelFileError, raised_as
from .families import (DEEPFLOYD, GGUF_T5_ARCHITECTURES, IF_PIPELINE, IF_PROBE_KEYS, IMAGEN_PYTORCH, LLM, NATIVE, T5,
                       T5_FOLDER, UNET_FOLDER, Family, folder_family, identify, read_json)
from .multi import (PLACEHOLDER_KEYS, UNET_PREFIXES, split_unet_name, stage_names, unet_indices, unet_name,
                    unet_numbers)
from .gguf import GGML_TYPE_IDS, GGML_TYPES, GGUFWeights, open_gguf
from .reader import (GGUF_SUFFIXES, PICKLE_SUFFIXES, SAFETENSORS_DTYPES, SAFETENSORS_SUFFIXES, WEIGHT_SUFFIXES,
                     Weights, is_index, load_pickle, load_pickle_state_dict, open_weights, tensors_of)

__all__ = ["DEEPFLOYD", "Family", "Found", "GGML_TYPES", "GGML_TYPE_IDS", "GGUFWeights", "GGUF_SUFFIXES",
           "GGUF_T5_ARCHITECTURES", "IF_PIPELINE", "IF_PROBE_KEYS", "IMAGEN_PYTORCH", "LLM", "ModelFileError",
           "NATIVE", "PICKLE_SUFFIXES", "SAFETENSORS_DTYPES", "SAFETENSORS_SUFFIXES", "T5", "T5_FOLDER", "UNET_FOLDER",
           "WEIGHT_SUFFIXES", "WHERE_MODELS_GO", "Weights", "folder_family", "identify", "is_index", "list_stages",
           "list_t5", "load_pickle", "load_pickle_state_dict", "open_gguf", "open_weights", "raised_as", "read_json",
           "resolve", "scan_folder", "split_unet_name", "stage_names", "tensors_of", "unet_name", "unet_numbers",
           "weight_files", "PLACEHOLDER_KEYS", "UNET_PREFIXES", "unet_indices"]
