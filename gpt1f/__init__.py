"""gpt1f: OpenAI's GPT-1 as pure PyTorch functions over a dict of TF-named parameters."""
from . import memory, random
from .config import Config
from .heads import HeadOutput, classify, multiple_choice, multiple_choice_logits, similarity
from .loss import loss_fn
from .model import lm_logits, transformer
from .params import count_params, init_params, param_shapes, scope
from .download import fetch, weights_dir
from .hf import load_hf, save_hf
from .openai_release import load_openai, save_openai
from .text import TextEncoder
from . import schedules
from .optim import AdamState, Optimizer, clip_by_global_norm, global_norm, openai_adam
from .train import make_train_step, train_step
from .per_example import per_example_grads
from . import dp, ensemble, lora
from .cache import forward_cached, forward_cached_, init_cache
from .generation import generate
from .scoring import score
