"""EdgeSAM model library (pure PyTorch)."""
from .checkpoint import load_state_dict_strict, load_student, save_student
from .edgesam import EdgeSAM
from .layers import fuse_for_deploy
from .prompt_decoder import PromptDecoder, select_outputs, stability_score
from .repvit import EncoderConfig, RepViTEncoder
from .teacher import SamTeacher, TinyViTConfig, build_teacher, build_teacher_prompt_decoder

__all__ = ["EdgeSAM", "EncoderConfig", "RepViTEncoder", "PromptDecoder", "SamTeacher", "TinyViTConfig",
           "build_teacher", "build_teacher_prompt_decoder", "fuse_for_deploy", "load_state_dict_strict", "load_student", "save_student",
           "select_outputs", "stability_score"]
