"""`hot`: settings for code that reads them on every request.

`django.conf.settings` is a LazyObject: each attribute read goes through a Python-level
`__getattribute__`, about half a microsecond, and the proxy's pipeline reads a dozen per request.
`hot.NAME` reads `settings.NAME` once and keeps the value; Django's `setting_changed` signal (sent
by `override_settings` and pytest-django's `settings` fixture) drops it again, so tests that change
a setting see the change.
"""

from __future__ import annotations

from django.conf import settings
from django.core.signals import setting_changed


class _HotSettings:
    def __getattr__(self, name: str):
        value = getattr(settings, name)
        self.__dict__[name] = value
        return value


hot = _HotSettings()


def _forget(*, setting: str, **kwargs) -> None:
    hot.__dict__.pop(setting, None)


setting_changed.connect(_forget, dispatch_uid="core.conf.hot")
