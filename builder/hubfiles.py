"""Dataset repos at one pinned commit (Hub, or a local folder laid out like one): split files, open files, downloads.

Everything goes through huggingface_hub: the commit is resolved once (`dataset_info`), the file list and sizes come
from one tree listing at that commit, files are opened for pyarrow with `HfFileSystem` (reads become HTTP Range
requests), and whole files go with `hf_hub_download` into the shared Hub cache (resumable, reused by later builds,
no second copy).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, HfFileSystem, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.repocard import metadata_load
from tqdm import tqdm

from .errors import SourceError

log = logging.getLogger(__name__)

# COCO's split names -> the names Hub repos give them; the first that exists wins.
HUB_SPLIT_NAMES = {"train2017": ("train", "train2017"), "val2017": ("validation", "val", "valid", "val2017"),
                   "test2017": ("test", "test2017")}
IGNORED = {"README.md", "config.json", "dataset_info.json", "dataset_infos.json", "dataset_dict.json",
           "dummy_data.zip"}
DOWNLOAD_THREADS = 4


def parse_repo(spec: str) -> tuple[str, str | None]:
    """'owner/name@revision' -> (repo, revision); a local folder path has no revision."""
    if "@" in spec and not Path(spec).exists():
        repo, revision = spec.rsplit("@", 1)
        return repo, revision or None
    return spec, None


def glob_regex(pattern: str) -> re.Pattern:
    """The Hub's data_files glob: `*` and `?` stay inside one folder, `**` crosses folders, `[...]` is a class."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[" and "]" in pattern[i + 1:]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass
class Repo:
    """A dataset repo at one commit. `local` is set for a folder on disk; `revision` for a Hub repo."""

    repo_id: str
    flag: str
    revision: str | None = None
    local: Path | None = None
    files: dict[str, int] = field(default_factory=dict)  # path in the repo -> size in bytes

    @classmethod
    def open(cls, spec: str, flag: str) -> Repo:
        repo_id, revision = parse_repo(spec)
        if Path(repo_id).exists():
            root = Path(repo_id)
            if not root.is_dir():
                raise SourceError(f"{flag} {repo_id}: could not be loaded (a file, not a dataset folder).")
            files = {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
            return cls(repo_id=str(root.resolve()), flag=flag, local=root.resolve(), files=files)

        try:
            api = HfApi()
            sha = api.dataset_info(repo_id, revision=revision).sha
            files = {entry.path: entry.size for entry in api.list_repo_tree(
                repo_id, revision=sha, repo_type="dataset", recursive=True) if hasattr(entry, "size")}
        except HFValidationError:
            raise SourceError(f"{flag} {repo_id}: could not be loaded (neither an existing folder nor a Hub dataset "
                              "id like owner/name).") from None
        except HfHubHTTPError as error:
            raise SourceError(f"{flag} {repo_id}: {str(error).splitlines()[0]} (check the repo id, HF_TOKEN for "
                              "private repos, or use --coco-dir).") from None
        except OSError as error:  # no network, DNS, refused connection
            raise SourceError(f"{flag} {repo_id}: the Hub could not be reached ({error}); check the network or "
                              "HF_ENDPOINT, or use --coco-dir.") from None
        return cls(repo_id=repo_id, flag=flag, revision=sha, files=files)

    # -- which files make a split --------------------------------------------------------------------------------
    def split_files(self, split: str) -> list[str]:
        """The parquet files of a COCO split (train2017, val2017, ...), as the repo's card or file names define it."""
        patterns = self._split_patterns()
        hub_split = next((name for name in HUB_SPLIT_NAMES.get(split, (split,)) if name in patterns), None)
        if hub_split is None:
            raise SourceError(f"{self.flag} {self.repo_id}: no split for {split} (it has "
                              f"{', '.join(sorted(patterns)) or 'no data files'}); check --splits.")
        files = self._match(patterns[hub_split])
        if not files:
            raise SourceError(f"{self.flag} {self.repo_id}: split {hub_split} has no files; check --splits.")
        other = [f for f in files if not f.endswith(".parquet")]
        if other:
            raise SourceError(f"{self.flag} {self.repo_id}: split {hub_split} is stored as {Path(other[0]).suffix} "
                              "files, not parquet; pass a parquet dataset repo, or use --coco-dir or --images.")
        return files

    def _split_patterns(self) -> dict[str, list[str]]:
        configs = self._card().get("configs")
        if configs:
            config = next((c for c in configs if c.get("default")), None) or \
                next((c for c in configs if c.get("config_name") == "default"), configs[0])
            data_files = config.get("data_files")
            if data_files is not None:
                # lazy: datasets takes ~1.3 s to import, and only a Hub source's file listing needs it
                from datasets.data_files import sanitize_patterns

                return {split: list(p) for split, p in sanitize_patterns(data_files).items()}
        from datasets.data_files import _get_data_files_patterns  # lazy: as above

        def resolve(pattern: str) -> list[str]:
            found = self._match([pattern])
            if not found:
                raise FileNotFoundError(pattern)
            return found

        try:
            return _get_data_files_patterns(resolve)
        except FileNotFoundError:
            return {}

    def _match(self, patterns: Iterable[str]) -> list[str]:
        out: list[str] = []
        for pattern in patterns:
            regex = glob_regex(pattern.removeprefix("./"))
            out.extend(path for path in sorted(self.files) if regex.match(path) and path not in out
                       and Path(path).name not in IGNORED and not any(p.startswith(".") for p in path.split("/")))
        return out

    def _card(self) -> dict:
        if "README.md" not in self.files:
            return {}

        try:
            return metadata_load(self.path("README.md")) or {}
        except (OSError, ValueError) as error:
            log.warning("%s %s: README.md front matter unreadable (%s); using file names", self.flag, self.repo_id,
                        error)
            return {}

    # -- bytes ------------------------------------------------------------------------------------------------------
    def cached(self, path: str) -> str | None:
        """The local file for `path` when it needs no download (a folder, or already in the Hub cache)."""
        if self.local is not None:
            return str(self.local / path)

        found = try_to_load_from_cache(self.repo_id, path, revision=self.revision, repo_type="dataset")
        return found if isinstance(found, str) else None

    def path(self, path: str, tqdm_class=None) -> str:
        """A local copy of the whole file (downloaded into the Hub cache at the pinned commit when needed)."""
        found = self.cached(path)
        if found is not None:
            return found

        try:
            return hf_hub_download(self.repo_id, path, repo_type="dataset", revision=self.revision,
                                   tqdm_class=tqdm_class)
        except (HfHubHTTPError, OSError) as error:
            raise SourceError(f"{self.flag} {self.repo_id}: {path} could not be downloaded "
                              f"({str(error).splitlines()[0]}); re-run to resume.") from None

    def open_file(self, path: str):
        """A seekable binary file for pyarrow: the local copy when there is one, else an HfFileSystem file at the
        pinned commit with no read-ahead (cache_type="none"), so each read is one HTTP Range request for exactly
        the bytes pyarrow asks for; the file is never downloaded whole."""
        local = self.cached(path)
        if local is not None:
            return open(local, "rb")  # noqa: SIM115 - the caller closes it

        return HfFileSystem().open(f"datasets/{self.repo_id}/{path}", "rb", revision=self.revision,
                                   cache_type="none", size=self.files[path])


def download_files(items: list[tuple[Repo, str]], *, progress: bool, desc: str = "downloading") -> dict[str, str]:
    """Download whole files (those not cached yet) in parallel, with one bar in bytes and its ETA.
    Returns {path in repo: local path}."""

    todo = [(repo, path) for repo, path in items if repo.cached(path) is None]
    done = {path: repo.cached(path) for repo, path in items if repo.cached(path) is not None}
    if not todo:
        return done
    total = sum(repo.files[path] for repo, path in todo)
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, dynamic_ncols=True,
              mininterval=1, disable=not progress) as bar:
        lock = threading.Lock()

        class Forward:
            """Stands in for huggingface_hub's per-file bar: its progress goes to the one bar above."""

            def __init__(self, *args, **kwargs):
                if kwargs.get("initial"):
                    self.update(kwargs["initial"])

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return None

            def close(self):
                return None

            def update(self, n=1):
                with lock:
                    bar.update(n or 0)

            def update_transfer(self, n=1):
                return None

            def set_description(self, *args, **kwargs):
                return None

        with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS, thread_name_prefix="download") as pool:
            for (_, path), local in zip(todo, pool.map(lambda item: item[0].path(item[1], tqdm_class=Forward), todo)):
                done[path] = local
    return done
