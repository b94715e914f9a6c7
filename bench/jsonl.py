"""The JSON-lines reader the bench collectors share: every line of a run's log that is a JSON
object, in order (other lines, e.g. progress text, are skipped)."""
import json, os


def rows(folder, name):
    """The JSON objects of `folder/name`, one per line starting with `{` ([] when the file is missing)."""
    path = os.path.join(folder, name)
    out = []
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out
