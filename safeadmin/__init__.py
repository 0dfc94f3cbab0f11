"""Django admin pieces every app's admin shares and that belong to none of them; imports nothing of ours."""
