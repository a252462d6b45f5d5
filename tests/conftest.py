import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import autoremat

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
    print_blob=True,
)
# ci: what .ci/run affords on 2 cores; dev: the larger local profile (HYPOTHESIS_PROFILE=dev).
settings.register_profile("ci", max_examples=100, **_COMMON)
settings.register_profile("dev", max_examples=600, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _fresh_compile_state():
    """Each test starts with no Dynamo cache and no recorded plans, so it sees only its own compiles."""
    torch._dynamo.reset()
    autoremat.clear_plans()
    yield
    torch._dynamo.reset()


@pytest.fixture
def fake_pg():
    """A world of two ranks in this process (this is rank 0); collectives do not communicate."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        yield
    finally:
        dist.destroy_process_group()
