"""Drives a running skyweave gateway with the official `openai` package.

Run by crates/skyweave/tests/cases/python_sdk.rs with SKYWEAVE_BASE_URL set.
Each check raises on failure; the last line printed on success is
`all SDK checks passed`.
"""

import json
import os

import openai
from openai import OpenAI

client = OpenAI(base_url=os.environ["SKYWEAVE_BASE_URL"], api_key="unused-by-the-gateway", max_retries=0)

# Chat, non-streaming, with the raw response to read skyweave's headers.
raw = client.chat.completions.with_raw_response.create(
    model="chat",
    messages=[{"role": "user", "content": "hello"}],
    seed=7,
)
completion = raw.parse()
assert completion.choices[0].message.content.startswith("Hello from"), completion
assert completion.usage.completion_tokens > 0, completion.usage
assert raw.headers["x-skyweave-deployment"] in ("chat@azure", "chat@vllm"), raw.headers
assert raw.headers["x-skyweave-attempts"] == "1"
assert raw.headers["x-request-id"]
print("chat ok:", raw.headers["x-skyweave-deployment"])

# Tool definitions pass through; the reply still parses.
completion = client.chat.completions.create(
    model="chat",
    messages=[{"role": "user", "content": "weather?"}],
    tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}],
)
assert completion.choices[0].finish_reason in ("stop", "tool_calls"), completion
print("tools ok")

# Streaming, with the final usage chunk.
stream = client.chat.completions.create(
    model="chat",
    messages=[{"role": "user", "content": "stream please"}],
    stream=True,
    stream_options={"include_usage": True},
)
pieces, usage = [], None
for chunk in stream:
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
    if chunk.usage is not None:
        usage = chunk.usage
text = "".join(pieces)
assert text.startswith("Hello from"), text
assert usage is not None and usage.completion_tokens > 0, usage
print("stream ok:", repr(text))

# Bedrock (Converse) and Vertex (Gemini) behind the same API: tool calls, tool results and
# streamed tool calls, translated both ways. The caller pins each cloud in turn.
weather = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def tool_round_trip(cloud):
    pin = {"x-skyweave-allowed-clouds": cloud}
    raw = client.chat.completions.with_raw_response.create(
        model="claude", messages=[{"role": "user", "content": "please use a tool"}], tools=weather,
        extra_headers=pin)
    assert raw.headers["x-skyweave-cloud"] == cloud, raw.headers
    completion = raw.parse()
    assert completion.choices[0].finish_reason == "tool_calls", completion
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather", call
    assert json.loads(call.function.arguments) == {"city": "skyweave"}, call.function.arguments
    answer = client.chat.completions.create(model="claude", tools=weather, extra_headers=pin, messages=[
        {"role": "user", "content": "please use a tool"},
        completion.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ])
    assert answer.choices[0].message.content, answer
    names, arguments, finish = [], "", None
    for chunk in client.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "please use a tool"}], tools=weather,
        stream=True, extra_headers=pin,
    ):
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta_call.function.name:
                names.append(delta_call.function.name)
            arguments += delta_call.function.arguments or ""
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert names == ["get_weather"] and finish == "tool_calls", (cloud, names, finish)
    assert json.loads(arguments) == {"city": "skyweave"}, arguments
    print(cloud, "ok: tool calls, tool results, streamed tool calls")


tool_round_trip("aws")
tool_round_trip("gcp")

# Embeddings (from the simulator), including the SDK's default base64 encoding.
embeddings = client.embeddings.create(model="embed", input=["alpha", "beta"])
assert len(embeddings.data) == 2 and len(embeddings.data[0].embedding) == 16, embeddings
print("embeddings ok")

# Models.
ids = sorted(model.id for model in client.models.list())
assert ids == ["chat", "claude", "cut", "embed"], ids
print("models ok:", ids)

# Errors are OpenAI-shaped, so the SDK raises its typed exceptions.
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as error:
    assert error.status_code == 404
    assert "no-such-model" in error.message, error.message
    assert error.code == "model_not_found", error.code
try:
    client.chat.completions.create(model="chat", messages=[])
    raise AssertionError("empty messages accepted")
except openai.BadRequestError as error:
    assert error.param == "messages", error.param
# A stream cut after its first chunk ends with an error event: the SDK raises.
try:
    for chunk in client.chat.completions.create(
        model="cut", messages=[{"role": "user", "content": "x"}], stream=True
    ):
        pass
    raise AssertionError("a cut stream ended cleanly")
except openai.APIError as error:
    assert "upstream stream failed" in str(error), error
print("errors ok")

print("all SDK checks passed")
