"""The render helpers against `swe-env export` on written trajectory files: the cases a live episode rarely makes
(chat-tools text beside a call, several calls in one turn, separate reasoning, a final answer's reasoning)."""

import json
import os
import subprocess

import pytest

from swe_env import render


def start(tool_format):
    return {
        "type": "episode_start",
        "schema_version": 1,
        "episode_id": f"ep-render-{tool_format}",
        "instance_id": "owner__repo-1",
        "task": {"instance_id": "owner__repo-1", "repo": "owner/repo", "problem_statement": "the widget breaks"},
        "image": "img",
        "image_id": "sha256:1",
        "tool_format": tool_format,
        "limits": {},
        "model": {"name": "m"},
        "prompt": [
            {"role": "system", "content": "You are an agent.\n"},
            {"role": "user", "content": "Fix: the widget breaks"},
        ],
        "versions": {},
        "started_at": "2026-01-01T00:00:00.000Z",
    }


def step(idx, raw_action, observation, **extra):
    record = {
        "type": "step",
        "step_idx": idx,
        "raw_action": raw_action,
        "parsed_call": None,
        "observation": observation,
        "tool_ms": 3,
        "at": "2026-01-01T00:00:01.000Z",
    }
    record.update(extra)
    return record


def end(n_steps, **extra):
    record = {"type": "episode_end", "status": "submitted", "n_steps": n_steps, "duration_ms": 9,
              "ended_at": "2026-01-01T00:00:02.000Z"}
    record.update(extra)
    return record


TEXT = [
    start("text"),
    step(0, "<think>look</think>\n<tool: bash>\nls\n</tool>", "<output>\na b\n</output>\n", tool="bash",
         reasoning="I should look around.", parsed_call={"tool": "bash", "command": "ls"}),
    step(1, "no call", "FormatError: no tool call", format_error="no tool call"),
    step(2, "<tool: edit>\nx\n</tool>", "edit failed: not found", tool="edit", tool_error="not_found"),
    end(3, final_answer="Done.", final_answer_reasoning="All checked."),
]

CALL = json.dumps({"arguments": "{\"command\": \"ls\"}", "name": "bash"}, separators=(",", ":"))
TWO_CALLS = json.dumps([
    {"id": "c2", "name": "bash", "arguments": {"command": "pwd", "a": [1, 2]}},
    {"id": "c3", "name": "create", "arguments": "{\"path\": \"f\"}"},
], separators=(",", ":"))
NATIVE = [
    start("json"),
    step(0, CALL, "<output>\na\n</output>\n", tool="bash", tool_call_id="c1", reasoning="Let me list files."),
    step(1, TWO_CALLS, "FormatError: one call per turn", format_error="one call per turn", content="Both at once.",
         reasoning="Two at once."),
    step(2, "I am done?", "FormatError: no tool call", format_error="no tool call"),
    step(3, CALL, "<output>\nb\n</output>\n", tool="bash", tool_call_id="c4", content="Listing again."),
    end(4),
]


@pytest.mark.parametrize("records", [TEXT, NATIVE], ids=["text", "native"])
def test_render_matches_swe_env_export_on_a_trajectory_file(records, tmp_path):
    path = tmp_path / "trajectory.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    binary = os.environ.get("SWE_ENV_BIN")
    if not binary:
        pytest.fail("SWE_ENV_BIN is not set: run these tests through tests/it/python_client.rs (cargo nextest)")
    for fmt, fn in (("cwm", render.cwm_messages), ("openai-chat", render.openai_messages)):
        done = subprocess.run([binary, "export", str(path), "--format", fmt], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        row = json.loads(done.stdout)
        assert fn(records) == row["messages"], fmt
        if fmt == "cwm":
            # And the transcript of those messages renders (tool outputs verbatim, others stripped).
            prompt = render.cwm_prompt(row["messages"])
            assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                                     "You are an agent.<|eot_id|>")
            assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
