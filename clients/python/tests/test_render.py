"""The render helpers give the same messages as `swe-env export` for the same trajectory."""

import json

from swe_env import render

from conftest import bash


def text_episode(client, task_id):
    with client.episode(task_id, max_turns=10, model={"model": "pytest-policy"}) as ep:
        ep.step(bash("ls src/spans"))
        ep.step("I will not call a tool this turn.")  # a format error: back to the model as a user turn
        ep.step(
            "<tool: create>\n/tmp/notes.txt\nline one\n  indented  \n</tool>",
            model_turn={"reasoning": "Write notes first.", "model_ms": 12},
        )
        ep.step(bash("cat /tmp/notes.txt"))
        ep.close("done, nothing to fix")
    return ep


def test_cwm_and_openai_messages_match_swe_env_export_text_format(client, task_id, export):
    ep = text_episode(client, task_id)
    records = ep.trajectory()
    cwm = export(ep.id, "cwm")
    openai = export(ep.id, "openai-chat")
    assert render.cwm_messages(records) == cwm["messages"]
    assert render.openai_messages(records) == openai["messages"]
    # The episode's local records (no round trip) give the same conversation.
    assert ep.messages("cwm") == cwm["messages"]
    assert ep.messages("openai") == openai["messages"]
    roles = [m["role"] for m in cwm["messages"]]
    assert roles == ["system", "user", "assistant", "tool: bash", "assistant", "user", "assistant", "tool: create",
                     "assistant", "tool: bash", "assistant"]
    assert cwm["messages"][6]["reasoning"] == "Write notes first."
    assert openai["tools"] == []


def test_openai_messages_match_swe_env_export_json_format(client, task_id, export):
    with client.episode(task_id, tool_format="json", max_turns=5) as ep:
        ep.step(tool_call={"name": "bash", "arguments": {"command": "echo é-ünïcode"}, "call_id": "call_1"})
        ep.step(tool_call={"name": "bash", "arguments": '{"command": "ls"}', "call_id": "call_2"})
        tools = json.loads(ep.info.openai_tools_json)
    records = ep.trajectory()
    openai = export(ep.id, "openai-chat")
    assert render.openai_messages(records) == openai["messages"]
    assert ep.messages("openai") == openai["messages"]
    assert [m["role"] for m in openai["messages"]] == ["user", "assistant", "tool", "assistant", "tool"]
    assert openai["messages"][2]["tool_call_id"] == "call_1"
    assert openai["tools"] == tools
    cwm = export(ep.id, "cwm")
    assert render.cwm_messages(records) == cwm["messages"] == ep.messages("cwm")


def test_cwm_prompt_layout():
    messages = [
        {"role": "system", "content": "  You are helpful.\n"},
        {"role": "user", "content": "Fix it."},
        {"role": "assistant", "content": "<tool: bash>\nls\n</tool>\n"},
        {"role": "tool: bash", "content": "<output>\na\n</output>\n"},
    ]
    expect = (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nFix it.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<tool: bash>\nls\n</tool><|eot_id|>"
        "<|start_header_id|>tool: bash<|end_header_id|>\n\n<output>\na\n</output>\n<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render.cwm_prompt(messages) == expect
    openai_style = messages[:3] + [{"role": "tool", "name": "bash", "content": "<output>\na\n</output>\n"}]
    assert render.cwm_prompt(openai_style) == expect
    layout = render.CwmLayout(begin_of_text="", assistant_prefix="<think>\n")
    assert render.cwm_prompt([{"role": "user", "content": "q"}], layout) == (
        "<|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        "<think>\n"
    )


def test_episode_cwm_prompt_is_the_next_model_input(client, task_id):
    with client.episode(task_id, max_turns=3, prompt=[{"role": "user", "content": "Fix the spans bug."}]) as ep:
        assert ep.cwm_prompt() == (
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nFix the spans bug.<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
        out = ep.step(bash("echo hi"))
        assert ep.cwm_prompt().endswith(
            "<|start_header_id|>assistant<|end_header_id|>\n\n<tool: bash>\necho hi\n</tool><|eot_id|>"
            "<|start_header_id|>tool: bash<|end_header_id|>\n\n" + out.observation.text + "<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
