"""Causal-LM pieces on a tiny random Llama (2 layers, 32 wide, grouped-query attention: 4 query and 2 key/value
heads) with SmolLM2's tokenizer: the prompt mask is exact, choice scoring ranks a planted answer first, the
per-example outputs carry the loss to the paired statistics, counts match the closed form, and every bad input
is one line before training."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from rank_sweep.config import LoraConfig, TaskConfig, TrainerConfig
from rank_sweep.errors import ConfigError, DataError
from rank_sweep.results.paired import paired_difference, score_interval
from rank_sweep.train import lora
from rank_sweep.train.causal import CausalLM, completion_logprobs
from rank_sweep.train.lm_data import IGNORE, CausalDataModule, LeftPadCollator, choice_token_ids, tokenize_lm
from rank_sweep.train.metrics import causal_metrics, causal_outputs, example_losses
from tests.lm_helpers import TINY_LLAMA, make_tiny_llama

CHOICES = [" negative", " positive"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    return tok, AutoModelForCausalLM.from_pretrained(folder).eval()


def lm_task(**kw) -> TaskConfig:
    base = {"name": "t", "type": "causal_lm", "source": "jsonl", "train_file": "a", "validation_file": "b",
            "labels": None, "metric": "loss", "metrics": ["loss", "perplexity"], "max_seq_length": 64}
    return TaskConfig(**{**base, **kw})


def rows(prompts, completions, choice=None) -> datasets.DatasetDict:
    ds = datasets.Dataset.from_dict({"prompt": prompts, "completion": completions,
                                     "choice": choice or [-1] * len(prompts)})
    return datasets.DatasetDict({"train": ds, "validation": ds})


PROMPTS = ["the film was great. Sentiment:", "awful. Sentiment:", "a very long and dull review of a film. Sentiment:"]
ANSWERS = [" positive", " negative", " negative and boring"]


def test_an_example_is_prompt_then_completion_and_only_the_completion_is_labelled(tiny):
    tok, _ = tiny
    out = tokenize_lm(rows(PROMPTS, ANSWERS), tok, lm_task())["train"]
    for i, (p, c) in enumerate(zip(PROMPTS, ANSWERS, strict=True)):
        pi = tok(p)["input_ids"]
        ci = tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert out[i]["input_ids"] == pi + ci
        assert out[i]["labels"] == [IGNORE] * len(pi) + ci and out[i]["prompt_length"] == len(pi)


def test_the_loss_counts_completion_tokens_only_and_left_padding_changes_nothing(tiny):
    tok, model = tiny
    data = tokenize_lm(rows(PROMPTS, ANSWERS), tok, lm_task())["train"]
    batch = LeftPadCollator(tok.pad_token_id)([data[i] for i in range(len(data))])
    # by hand: each example alone, unpadded, full logits, -log p of each completion token given its prefix
    nll, count = 0.0, 0
    with torch.no_grad():
        for ex in data:
            ids = torch.tensor([ex["input_ids"]])
            logp = model(input_ids=ids).logits[0].log_softmax(-1)
            for t in range(ex["prompt_length"], len(ex["input_ids"])):
                nll -= float(logp[t - 1, ex["input_ids"][t]])
                count += 1
        module = CausalLM(model, lm_task(), TrainerConfig())
        loss = module.training_step(batch, 0)
        picked = completion_logprobs(model, batch)[2]
    assert count == sum(len(a) for a in data["labels"]) - sum(data["prompt_length"])
    assert float(loss) == pytest.approx(nll / count, rel=1e-5)
    assert float(-picked.sum()) == pytest.approx(nll, rel=1e-5)


class Planted(torch.nn.Module):
    """A stand-in causal LM: every position favours the tokens of ' positive' when the prompt holds the word
    'great', else those of ' negative'."""

    def __init__(self, tok, choices):
        super().__init__()
        self.vocab, self.great = len(tok), tok(" great", add_special_tokens=False)["input_ids"][0]
        self.ids = [tok(c, add_special_tokens=False)["input_ids"] for c in choices]

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, use_cache=False):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for i, row in enumerate(input_ids):
            logits[i, :, self.ids[1 if (row == self.great).any() else 0]] = 20.0
        keep = logits_to_keep or input_ids.shape[1]
        return type("Out", (), {"logits": logits[:, -keep:]})()


@pytest.mark.parametrize("choices", [CHOICES, [" negative", " very positive indeed"]], ids=["one-token", "multi-token"])
def test_choice_scoring_ranks_a_planted_answer_first(tiny, choices):
    tok, _ = tiny
    task = lm_task(choices=choices, metric="accuracy", metrics=["accuracy", "loss"])
    prompts = ["it was great. Sentiment:", "it was bad. Sentiment:", "so great. Sentiment:", "dull. Sentiment:"]
    gold = [1, 0, 1, 0]
    data = tokenize_lm(rows(prompts, [choices[g] for g in gold], gold), tok, task)
    module = CausalLM(Planted(tok, choices), task, TrainerConfig())
    validate(module, CausalDataModule(data, tok, task, eval_batch_size=3))
    assert module.last_metrics["accuracy"] == 1.0
    assert (module.last_outputs.argmax(-1) == gold).all() and list(module.last_labels) == gold


def test_one_token_choices_read_off_the_training_pass_equal_a_pass_per_choice(tiny):
    tok, model = tiny
    task = lm_task(choices=CHOICES, metrics=["loss", "accuracy"])
    data = tokenize_lm(rows(PROMPTS[:2], [CHOICES[1], CHOICES[0]], [1, 0]), tok, task)
    batch = LeftPadCollator(tok.pad_token_id)(list(data["validation"]))
    module = CausalLM(model, task, TrainerConfig())
    validate(module, CausalDataModule(data, tok, task, eval_batch_size=2))
    fast = module.details[0]["choice_ll"]
    with torch.no_grad():
        slow = module._choice_scores(batch).numpy()
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("labelled", [False, True], ids=["no labels", "choices"])
def test_per_example_outputs_carry_the_loss_to_the_paired_statistics_under_either_flag(labelled):
    rng = np.random.default_rng(0)
    nll, tokens = rng.uniform(0.01, 9.0, 300), rng.integers(1, 6, 300)
    task = lm_task(**({"choices": CHOICES} if labelled else {}))
    outputs, labels = causal_outputs(task, nll, tokens)
    loss = causal_metrics(task, nll, tokens)["loss"]
    assert loss == pytest.approx(nll.sum() / tokens.sum())
    np.testing.assert_allclose(example_losses(outputs.astype(np.float32)).mean(), loss, rtol=1e-5)
    for regression in (False, True):  # the select command reads the flag from the stored labels: both must agree
        ci = score_interval("loss", outputs, labels, is_regression=regression, num_labels=2)
        assert ci.estimate == pytest.approx(loss, rel=1e-9) and ci.low < loss < ci.high
    better = causal_outputs(task, nll * 0.5, tokens)[0]
    diff = paired_difference("loss", outputs, better, labels, is_regression=task.is_regression, num_labels=2)
    assert diff.estimate == pytest.approx(-loss / 2) and diff.high < 0


def test_lora_counts_on_grouped_query_attention_match_the_closed_form(tiny):
    _, model = tiny
    import copy

    targets = ["Wq", "Wk", "Wv", "Wo", "Wup", "Wdown", "Wgate"]
    plan = lora.plan_targets(model, targets)
    wrapped = lora.wrap(copy.deepcopy(model), LoraConfig(r=4, targets=targets), plan=plan)
    h, kv, ff, layers = TINY_LLAMA["hidden_size"], 16, TINY_LLAMA["intermediate_size"], 2
    closed = layers * 4 * ((h + h) + 2 * (h + kv) + (h + h) + 3 * (h + ff))  # q, k and v, o, up/gate/down
    counts = lora.count_parameters(wrapped, lora.num_params(model))
    assert counts.lora_params == plan.lora_params(4) == closed and counts.head_params == 0
    grouped = lora.plan_targets(model, ["all_linear"])  # the group: the same seven roles, the same count
    assert grouped.targets == tuple(targets) and grouped.lora_params(4) == closed
    assert lora.plan_targets(model, ["mlp"]).lora_params(4) == layers * 4 * 3 * (h + ff)
    assert type(wrapped).__name__ == "PeftModelForCausalLM"


def validate(module, dm) -> None:
    import lightning.pytorch as pl

    pl.Trainer(accelerator="cpu", devices=1, precision="32-true", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).validate(module, datamodule=dm, verbose=False)


def one_line(fn, *args) -> str:
    with pytest.raises((ConfigError, DataError)) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_inputs_are_one_line(tiny, tmp_path):
    tok, _ = tiny
    msg = one_line(tokenize_lm, rows(PROMPTS, ANSWERS), tok, lm_task(max_seq_length=12))
    assert msg.startswith("1 of 3 training and 1 of 3 validation examples are longer than task.max_seq_length=12 "
                          "tokens (prompt + completion; the longest 17)")
    assert "task.truncation=left" in msg
    cut = tokenize_lm(rows(PROMPTS, ANSWERS), tok, lm_task(max_seq_length=12, truncation="left"))["train"]
    answer = tok(ANSWERS[2], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert max(cut["length"]) == 12 and cut[2]["labels"] == [IGNORE] * (12 - len(answer)) + answer  # never cut
    msg = one_line(choice_token_ids, tok, lm_task(choices=[" not entailment", " not sure"]))
    assert msg.startswith("task.choices ' not entailment' and ' not sure' start with the same token 'Ġnot' (id 441)")
    saved, tok.chat_template = tok.chat_template, None
    try:
        msg = one_line(tokenize_lm, rows(PROMPTS, ANSWERS), tok, lm_task(format="chat"))
    finally:
        tok.chat_template = saved
    assert msg.startswith("task.format=chat needs a chat template")


@pytest.mark.parametrize("kw, shown", [
    ({"metric": "perplexity"}, "task.metric='perplexity' is not valid as the primary metric"),
    ({"metrics": ["loss", "accuracy"]}, "task.metrics contains 'accuracy', which scores the most likely of task.choices"),
    ({"choices": [" a", " a"]}, "task.choices=[' a', ' a'] is not valid"),
    ({"choices": CHOICES, "labels": ["0", "1", "2"]}, "task.labels=['0', '1', '2'] is not valid"),
    ({"format": "poem"}, "task.format='poem' is not valid"),
    ({"prompt_template": "{question}"}, "task.prompt_template='{question}' is not valid"),
])
def test_bad_causal_task_configs_are_named(kw, shown):
    with pytest.raises(ConfigError) as e:
        lm_task(**kw)
    assert str(e.value).startswith(shown)


def test_a_classification_task_refuses_perplexity_and_is_not_causal():
    with pytest.raises(ConfigError, match="task.metric='perplexity' is not valid"):
        TaskConfig(metric="perplexity")
    assert not TaskConfig().is_causal and TaskConfig().type == "classification"


@pytest.mark.parametrize("search, shown", [
    ({"strategy": "nested"}, "search=nested is not supported on causal LM task"),
    ({"reference_methods": ["ia3"]}, "method=lora / search.reference_methods are not supported on causal LM task"),
    ({"head_reference": True}, "search.head_reference=true is not valid for causal LM task"),
])
def test_what_a_causal_task_cannot_be_combined_with_is_refused_in_one_line(search, shown):
    from rank_sweep.config import RunConfig, SearchConfig
    from rank_sweep.train.causal import check_causal_run

    cfg = RunConfig()
    cfg.task = lm_task()
    cfg.search = SearchConfig(**search)
    with pytest.raises(ConfigError) as e:
        check_causal_run(cfg)
    assert str(e.value).startswith(shown) and "\n" not in str(e.value)
