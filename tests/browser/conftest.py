"""What the browser tests share: a customer-success staff member whatever tests ran before."""

from __future__ import annotations

import pytest


@pytest.fixture
def customer_success(make_staff):
    """A "Customer success" staff member (make_staff makes the groups again if a transactional test emptied them)."""
    return make_staff("Customer success", username="cara")
