"""Where the web panel's files (`index.html`, its scripts and styles) are: in the package.

The panel ships as package data of `facegate`, in `facegate/static/`: pyproject.toml maps the
package `facegate.static` to the repository's `static/`, so a wheel (`pip install`, `pipx
install`) holds it beside the code and it is found with `importlib.resources`, wherever the
package is installed and whatever the working directory.

An editable install (`pip install -e .`, what `make setup` does) maps that folder too, but
setuptools' editable finder cannot import a sub-package without `__init__.py` that lives outside
`src/` (pypa/setuptools#4943). There the panel is `static/` in the project folder the installer
recorded for the editable install (PEP 610: `direct_url.json`, `dir_info.editable`), the folder
holding the imported package, so the checkout's files are served as they are edited.

No panel found (a package without its data): the server answers `/` with JSON only.
"""

from __future__ import annotations

import json
from importlib import metadata, resources
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

__all__ = ["editable_project", "static_dir"]

DISTRIBUTION = "facegate"
PANEL = "static"


def static_dir() -> Path:
    """The folder holding the panel (`index.html` and the files it loads)."""
    packaged = resources.files("facegate") / PANEL
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    project = editable_project()
    if project is not None and (project / PANEL).is_dir():
        return project / PANEL
    # Not there: what `create_app` checks for (no static mount, `/` answers JSON).
    return Path(str(packaged))


def editable_project() -> Path | None:
    """The project folder of an editable install of facegate, None for any other install.

    Only a record that names a local folder holding the imported package counts (a stale
    record of another checkout, or a distribution other than the one imported, does not).
    """
    try:
        text = metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    dir_info = record.get("dir_info")
    url = record.get("url")
    if not (isinstance(dir_info, dict) and dir_info.get("editable") and isinstance(url, str)):
        return None
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    project = Path(url2pathname(parts.path))
    package = resources.files("facegate")
    if not isinstance(package, Path) or not package.resolve().is_relative_to(project.resolve()):
        return None
    return project
