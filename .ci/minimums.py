"""Each direct dependency pinned to the lowest version pyproject.toml allows, one `name==version`
line each (the extras' too): the constraints CI installs the unit tests' lowest environment with."""

import tomllib

from packaging.requirements import Requirement

with open("pyproject.toml", "rb") as file:
    project = tomllib.load(file)["project"]
for text in project["dependencies"] + sum(project["optional-dependencies"].values(), []):
    requirement = Requirement(text)
    lowest = [s.version for s in requirement.specifier if s.operator in (">=", "==", "~=")]
    if lowest:
        print(f"{requirement.name}=={lowest[0]}")
