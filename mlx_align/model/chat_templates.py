"""Chat templates a model built by ``init-model`` can carry (Jinja, as transformers reads them).

- ``chatml``: ChatML turns, for models trained on ``messages`` data.
- ``chatml-tools``: ChatML with tools as Qwen2.5 writes them: the schemas in
  a system turn, calls as ``<tool_call>{json}</tool_call>`` (special tokens),
  results as ``<tool_response>`` user turns; mlx-lm reads its calls with its
  ``json_tools`` parser.
- ``qa``: a user turn renders as ``Question: ...\\nAnswer:``, the plain format
  the capstone trains on, so ``mlx_lm server``'s ``/v1/chat/completions``
  sends the model exactly the prompt it learned to answer.
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

CHAT_TEMPLATES = {"chatml": CHATML, "chatml-tools": CHATML_TOOLS, "qa": QUESTION_ANSWER}

# Special tokens a template needs beyond the tokenizer's own.
TEMPLATE_TOKENS = {"chatml-tools": ["<tool_call>", "</tool_call>"]}
