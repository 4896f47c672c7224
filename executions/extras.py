"""The optional parts of django-executions, and the error that names the extra to install."""

DISTRIBUTION = "django-executions"


class MissingExtra(ImportError):
    """A feature needs a library that only one of the package's extras installs."""

    def __init__(self, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the optional dependencies of the '{extra}' extra: "
            f"pip install '{DISTRIBUTION}[{extra}]'"
        )
        self.extra = extra
