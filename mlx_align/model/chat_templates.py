"""Chat templates a model built by ``init-model`` can carry (Jinja, as transformers reads them).

- ``chatml``: ChatML turns, for models trained on ``messages`` data.
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

CHAT_TEMPLATES = {"chatml": CHATML, "qa": QUESTION_ANSWER}
