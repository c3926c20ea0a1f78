"""The capstone's calculator, the one tool `make capstone-tools` gives the model:
``--tool calculator:add`` with recipes/ on ``PYTHONPATH``.

Its type hints and docstring are its JSON schema (``get_json_schema``), which
the ``qa-tools`` template shows as ``Tools: add(a, b)``.
"""


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b
