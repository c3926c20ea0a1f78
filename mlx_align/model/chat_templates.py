"""Chat templates a model built by ``init-model`` can carry (Jinja, as transformers reads them).

- ``chatml``: ChatML turns, for models trained on ``messages`` data.
- ``chatml-tools``: ChatML with tools as Qwen2.5 writes them: the schemas in
  a system turn, calls as ``<tool_call>{json}</tool_call>`` (special tokens),
  results as ``<tool_response>`` user turns; mlx-lm reads its calls with its
  ``json_tools`` parser.
- ``qa``: a user turn renders as ``Question: ...\\nAnswer:``, the plain format
  the capstone trains on, so ``mlx_lm server``'s ``/v1/chat/completions``
  sends the model exactly the prompt it learned to answer.
- ``qa-tools``: ``qa`` plus tools, short enough for the capstone's model: a
  ``Tools: add(a, b)`` line first, calls in mlx-lm's ``pythonic`` form
  ``<|tool_call_start|>[add(a=9, b=3)]<|tool_call_end|>`` (special tokens),
  and a result right after its call as `` = 12.``, where a worked step
  writes its sum (``9 + 3 = 12.``), so the model reads it where it has
  learned to read sums. Without tools or tool turns it renders what ``qa``
  renders (tested), but for an assistant turn that already starts with
  whitespace: that one renders verbatim, as the model sampled it, so a
  conversation grows by exactly the model's tokens.
"""

# The BOS is written by the template because transformers tokenizes a
# rendered chat with add_special_tokens=False.
CHATML = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# No BOS: the tokenizer adds none to plain text, so the served prompt's tokens
# equal the training prompt's. An assistant turn ends in EOS, as a trained
# completion does; a system message is left out (the format has no place for one).
QUESTION_ANSWER = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'Question: ' + message['content'] + '\n"
    "Answer:' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)

# An assistant turn's content renders verbatim (a sampled call included), so
# a conversation grows by exactly the tokens a model sampled.
CHATML_TOOLS = (
    "{{ bos_token }}{% if tools %}<|im_start|>system\nTools:\n<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n"
    'Call one as <tool_call>{"name": ..., "arguments": {...}}</tool_call><|im_end|>\n'
    "{% endif %}{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
    "{% elif message['role'] == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    "{% for tool_call in message.tool_calls %}<tool_call>"
    '{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}'
    "</tool_call>{% endfor %}<|im_end|>\n"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A call (in content, as sampled, or in ``tool_calls``, as TRL's data holds
# it) ends the turn without EOS: the model stops at the call's end token.
QUESTION_ANSWER_TOOLS = (
    "{% if tools %}Tools: {% for tool in tools %}{% set f = tool.function or tool %}"
    "{{ f.name }}({{ f.parameters.properties | list | join(', ') }})"
    "{% if not loop.last %}, {% endif %}{% endfor %}{{ '\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'Question: ' + message['content'] + '\n"
    "Answer:' }}"
    "{% elif message['role'] == 'tool' %}{{ ' = ' + message['content'] + '.' }}"
    "{% elif message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{{ content if content[:1] in [' ', '\n'] else ' ' + content }}"
    "{% for call in message.tool_calls or [] %}{% set call = call.function or call %}"
    "<|tool_call_start|>[{{ call.name }}({% for key, value in call.arguments.items() %}"
    "{{ key }}={{ value | tojson }}{% if not loop.last %}, {% endif %}{% endfor %})]"
    "<|tool_call_end|>{% endfor %}"
    "{% if not (message.tool_calls or content.endswith('<|tool_call_end|>')) %}"
    "{{ eos_token }}{% endif %}"
    "{% endif %}{% endfor %}"
)

CHAT_TEMPLATES = {
    "chatml": CHATML,
    "chatml-tools": CHATML_TOOLS,
    "qa": QUESTION_ANSWER,
    "qa-tools": QUESTION_ANSWER_TOOLS,
}

# Special tokens a template needs beyond the tokenizer's own.
TEMPLATE_TOKENS = {
    "chatml-tools": ["<tool_call>", "</tool_call>"],
    "qa-tools": ["<|tool_call_start|>", "<|tool_call_end|>"],
}
