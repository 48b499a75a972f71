"""Exercise 02.1: Gemma's template refuses two user turns in a row (roles must alternate)."""
import os

from jinja2.exceptions import TemplateError

from gemma_widgets import load_model
from gemma_widgets.course import check
from gemma_widgets.course.environment import quiet

quiet()
tok = load_model(os.environ.get("GEMMA_MODEL", "bundled")).tokenizer
two_users = [{"role": "user", "content": "What is the capital of France?"},
             {"role": "user", "content": "And of Italy?"}]
try:
    tok.apply_chat_template(two_users, tokenize=False, add_generation_prompt=True)
    error = None
except TemplateError as exc:
    error = exc
print(f"{type(error).__name__}: {error}")
check("the template refuses user, user", error is not None and "alternate" in str(error))
print("Gemma was trained on strictly alternating user/model turns; merge the two messages into one instead.")
