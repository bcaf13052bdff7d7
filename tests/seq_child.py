"""A sequential run on the tiny random Llama, as a separate process that the resume test kills (kill -9).

    python tests/seq_child.py OUT DATA_FILE TOKENIZER_DIR SLOW_SECONDS
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


TEXTS = ["The Eiffel Tower is a wrought-iron lattice tower in Paris.", "Michael Jordan is a former basketball player."]


def tiny_llama(tokenizer: str):
    """The tiny random Llama of the tests (seeded), with the tokenizer in ``tokenizer``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import _configs
    from modeledit.llm.model import LanguageModel

    tok = AutoTokenizer.from_pretrained(tokenizer)
    torch.manual_seed(0)
    return LanguageModel(AutoModelForCausalLM.from_config(_configs(len(tok))["llama"], dtype=torch.float32), tok, "tiny-llama")


def run(out: str, data: str, tokenizer: str, slow: float = 0.0):
    from modeledit import get_method
    from modeledit.llm.ability import Ability
    from modeledit.llm.bench import get_benchmark
    from modeledit.sequential import run_sequential

    lm = tiny_llama(tokenizer)
    method = get_method("alphaedit", layers=(1, 2), stats_tokens=3000, context_spec=((5, 2),), steps=8, nullspace_threshold=10.0)
    if slow:  # room for the test to kill the run between two batches
        edit = method.edit
        method.edit = lambda *a, **k: (time.sleep(slow), edit(*a, **k))[1]
    bench = get_benchmark("counterfact")
    cases = bench.load(data, 6)
    ability = Ability(TEXTS)
    return run_sequential(lm, method, bench, cases, out, batch_size=2, checkpoints=[2, 4], ability=ability)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
