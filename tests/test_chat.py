"""Chat models (flowfield.chat): the template's assistant header and end-of-turn token found
from the tokenizer; {"messages": [...]} records in `fit` and `eval` data; a trailing
end-of-turn token stripped and said so; prompts without the template warned about, in the
loaders and per sample on /v1/score."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import pytest
from helpers import chat_tokenizer, save_tiny_chat_model
from live_server import Server

from flowfield.chat import ChatFormat, chat_format, chat_record
from flowfield.checkpoint import save_flow
from flowfield.encoder import LatentEncoder
from flowfield.evaluation.evaluate import load_rollouts
from flowfield.flownet import FlowMetadata, FlowNet, flow_for_encoder
from flowfield.training.data import load_jsonl

QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("chat") / "policy")


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_the_template_header_and_end_of_turn_token_come_from_the_tokenizer():
    tok = chat_tokenizer()
    fmt = chat_format(tok)
    assert fmt.header == "<|im_start|>assistant\n" and fmt.templated
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert fmt.end_ids == {im_end}
    templated = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert not fmt.lacks_header(_ids(tok, templated))
    assert fmt.lacks_header(_ids(tok, "What is 2 + 2?")) and fmt.lacks_header([])
    four = _ids(tok, "4.")
    assert fmt.strip_end(four + [im_end]) == (four, [im_end])
    assert fmt.strip_end(_ids(tok, "4.<|im_end|>\n")) == (four, _ids(tok, "<|im_end|>\n"))
    assert fmt.strip_end(four) == (four, [])
    assert fmt.strip_end([im_end]) == ([im_end], [])  # never the whole response
    assert fmt.strip_end(_ids(tok, "4<|im_end|>.")) == (_ids(tok, "4<|im_end|>."), [])
    # a model without a template: nothing to check, its EOS is still an end token
    plain = ChatFormat(end_ids=frozenset({1}))
    assert not plain.lacks_header([5]) and plain.strip_end([5, 1]) == ([5], [1])


def test_chat_records_become_a_templated_prompt_and_the_last_assistant_message():
    tok = chat_tokenizer()
    convo = [*QUESTION, {"role": "assistant", "content": "4."}]
    prompt, response = chat_record(convo, tok)
    assert prompt == tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert response == "4."
    for bad, why in (
        ([], "non-empty list"),
        (QUESTION, "last message must be the assistant's"),
        ([{"role": "user"}, {"role": "assistant", "content": "4"}], "content must be text"),
    ):
        with pytest.raises(ValueError, match=why):
            chat_record(bad, tok)


def test_fit_and_eval_loaders_take_chat_records_strip_the_end_token_and_warn(
    tmp_path, chat_dir, caplog
):
    enc = LatentEncoder(chat_dir)
    tok = enc.tokenizer
    templated = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    rows = [
        {"messages": [*QUESTION, {"role": "assistant", "content": "4."}], "reward": 1.0},
        {"prompt": templated, "response": "4.<|im_end|>", "reward": 1.0},
        {"prompt": "What is 2 + 2?", "response": "5.", "reward": 0.0},
        {
            "prompt_ids": _ids(tok, templated),
            "response_ids": _ids(tok, "4.<|im_end|>\n"),
            "reward": 1.0,
        },
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    four, prompt = _ids(tok, "4."), tuple(_ids(tok, templated))
    with caplog.at_level(logging.WARNING):
        samples = load_jsonl(path, enc)
    assert [s.prompt_ids == prompt for s in samples] == [True, True, False, True]
    assert [list(s.response_ids) for s in samples] == [four, four, _ids(tok, "5."), four]
    assert "2 of 4 responses ended in the end-of-turn/EOS token '<|im_end|>'" in caplog.text
    assert "1 of 4 prompts do not end with the chat template's assistant header" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rollouts = load_rollouts(path, enc)
    assert [r.response_ids for r in rollouts] == [four, four, _ids(tok, "5."), four]
    assert rollouts[1].response == "4." and rollouts[0].prompt == templated
    assert "2 of 4 responses ended" in caplog.text and "1 of 4 prompts" in caplog.text
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": QUESTION}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: the last message must be"):
        load_jsonl(bad, enc)


def test_score_strips_the_end_token_and_warns_per_sample(tmp_path, chat_dir):
    enc = LatentEncoder(chat_dir)
    tok = enc.tokenizer
    net = FlowNet(flow_for_encoder(enc.hidden_size, enc.layer_fractions, depth=1))
    save_flow(tmp_path / "flow", net, FlowMetadata(net.config, asdict(enc.identity)))
    templated = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    srv = Server(
        tmp_path,
        env={"FLOWFIELD_MODEL_PATH": str(chat_dir), "FLOWFIELD_FLOW_PATH": str(tmp_path / "flow")},
    )
    try:
        with srv.client() as c:
            samples = [
                {"id": "clean", "prompt": templated, "response": "4.", "reward": 1.0},
                {"id": "eot", "prompt": templated, "response": "4.<|im_end|>", "reward": 1.0},
                {"id": "bare", "prompt": "What is 2 + 2?", "response": "4.", "reward": 0.0},
                {
                    "id": "ids",
                    "prompt_ids": _ids(tok, templated),
                    "response_ids": _ids(tok, "4.<|im_end|>\n"),
                    "reward": 0.0,
                },
            ]
            body = {
                "samples": samples,
                "options": {"return_deviations": True, "return_advantages": True},
            }
            r = c.post("/v1/score", json=body)
            assert r.status_code == 200, r.text
            clean, eot, bare, ids = r.json()["results"]
    finally:
        srv.stop()
    assert "warnings" not in clean
    assert eot["warnings"] == [
        "the response ended in the end-of-turn/EOS token '<|im_end|>': it was not scored (the "
        "flow is fitted on responses without it); its reward is 0"
    ]
    # the lists stay aligned to the response that was sent, the stripped token scored 0
    assert eot["num_tokens"] == 3 and len(eot["token_rewards"]) == len(eot["deviations"]) == 3
    assert eot["token_rewards"][:2] == clean["token_rewards"] and eot["token_rewards"][2] == 0
    assert eot["deviations"][:2] == clean["deviations"] and eot["deviations"][2] == 0
    assert eot["advantages"][2] == pytest.approx(eot["advantages"][1] - eot["token_rewards"][1])
    assert ids["num_tokens"] == 4 and ids["token_rewards"][2:] == [0.0, 0.0]
    assert ids["deviations"][:2] == clean["deviations"]
    assert len(bare["warnings"]) == 1 and "assistant header" in bare["warnings"][0]
    assert bare["status"] == "ok"  # scored, but not silently
