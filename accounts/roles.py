from django.db import models


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    PROMPT_ENGINEER = "prompt_engineer", "Prompt engineer"
    REVIEWER = "reviewer", "Reviewer"
    VIEWER = "viewer", "Viewer"


ROLE_VALUES = frozenset(Role.values)
