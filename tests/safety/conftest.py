# The filter stages are exercised through the proxy's real HTTP path.
from tests.proxy.conftest import proxy  # noqa: F401
