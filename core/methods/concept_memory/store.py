"""A memory store: one folder per memory, written so that a crash never loses what it held (METHODS.md §5).

    NAME/manifest.json      format version, the base model (family, fingerprint), what each concept trains
                            (`trains`, fixed when the memory is made), the current version, and every version
                            with the concepts it holds (a new version per learned concept)
    NAME/v0003/concept.safetensors   the consolidated weights and every concept's trigger vectors (one concept
                            file with several triggers: Apply Concept, exports and the patch service read it)
    NAME/v0003/bank.safetensors      the memory bank (bank.py)
    NAME/lock               held by the one writer (its process id)

A version folder is written whole into place before the manifest names it, and the manifest is replaced
atomically; so a writer killed at any moment leaves the previous version current, loadable and complete.
Old versions stay (the history); `prune` removes all but the newest few.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ...concepts import Concept, load_concept, save_concept
from ...errors import ConceptKitError, InputError, ModelLoadError
from ...files import atomic_folder, atomic_write, exclusive_lock, guarded, make_folder, safe_file_name
from ...model import Model
from .bank import MemoryBank

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = "lock"
CONCEPT_FILE = "concept.safetensors"
BANK_FILE = "bank.safetensors"
LOCK_WAIT_SECONDS = 10.0  # a second writer waits this long for the first, then fails with the fix
TRAINS = ("full", "attention", "lora")  # what each concept's task fine-tunes (the training service's kinds)
DEFAULT_TRAINS = "full"
EARLIER_TRAINS = "lora"  # what a memory made before `trains` was recorded learned with


@dataclass
class MemoryState:
    """One version of a memory: the consolidated concept (None before the first concept) and its bank."""

    version: int
    concept: Concept | None
    bank: MemoryBank

    @property
    def triggers(self) -> list[str]:
        return [t.word for t in self.concept.triggers] if self.concept is not None else []


class MemoryStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @property
    def name(self) -> str:
        return self.folder.name

    # --- reading ------------------------------------------------------------------------------------------------

    def on_disk(self) -> str:
        """What the memory's folder holds now, as a token that changes with every write (or its removal)."""
        try:
            stat = (self.folder / MANIFEST).stat()
        except FileNotFoundError:
            return "absent"
        return f"{stat.st_mtime_ns}:{stat.st_size}"

    def manifest(self) -> dict:
        path = self.folder / MANIFEST
        try:
            if not path.exists():
                raise FileNotFoundError(path)
            with guarded(path, "read the memory's manifest", "check that you may read it"):
                text = path.read_text(encoding="utf-8")
            info = json.loads(text)
            if not isinstance(info, dict) or not isinstance(info.get("versions"), list):
                raise ValueError("not a manifest")
            if int(info["format_version"]) > FORMAT_VERSION:
                raise ModelLoadError(f"memory '{self.name}' was written by a newer ConceptKit (manifest format "
                                     f"{info['format_version']}; this one reads {FORMAT_VERSION}); update ConceptKit.")
            if int(info["format_version"]) != FORMAT_VERSION:
                raise ValueError(f"unknown format version {info['format_version']!r}")
            if not isinstance(info["family"], str) or not isinstance(info["base_fingerprint"], str):
                raise ValueError("its model family or fingerprint is not text")
            numbers = [int(v["version"]) for v in info["versions"]]  # every entry read now, not at the commit
            if any(not isinstance(v.get("concepts", []), list) for v in info["versions"]):
                raise ValueError("a version's concepts are not a list")
            if info.get("trains", EARLIER_TRAINS) not in TRAINS:
                raise ValueError(f"it trains {info['trains']!r}, not one of {', '.join(TRAINS)}")
            if int(info["current"]) not in [0, *numbers]:
                raise ValueError(f"its current version {info['current']} is not one of its versions")
            return info
        except FileNotFoundError:
            raise InputError(f"{self.folder} is not a memory (no {MANIFEST}); create it with Concept Memory.") from None
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"memory '{self.name}': its {MANIFEST} is damaged ({e}); nothing was changed. Restore "
                                 f"it from a backup, or remove the folder {self.folder} to start the memory over.") \
                from None

    def check_fits(self, model: Model) -> None:
        info = self.manifest()
        if info["family"] != model.family or info["base_fingerprint"] != model.fingerprint():
            raise InputError(f"memory '{self.name}' was made on another model ({info['family']}, fingerprint "
                             f"{info['base_fingerprint']}; this one is {model.family}, {model.fingerprint()}): its "
                             "concepts only fit that model. Load that model, or use a new memory name for this one.")

    def trains(self) -> str:
        """What each of the memory's concepts fine-tunes: 'full' (every UNet weight), 'attention' or 'lora'."""
        return self.manifest().get("trains", EARLIER_TRAINS)

    def current(self) -> MemoryState:
        info = self.manifest()
        number = int(info["current"])
        if number == 0:
            return MemoryState(0, None, MemoryBank.empty())
        folder = self.folder / _version_folder(number)
        try:
            return MemoryState(number, load_concept(folder / CONCEPT_FILE), MemoryBank.load(folder / BANK_FILE))
        except (ConceptKitError, OSError) as e:
            raise ModelLoadError(f"memory '{self.name}': version {number} is damaged ({e}); nothing was changed. "
                                 f"Point {MANIFEST}'s 'current' at an earlier version, or start a new memory.") \
                from None

    def learned_by(self, trigger: str) -> dict:
        """The parameters of the newest version that learned `trigger` ({} if none did)."""
        for version in reversed(self.manifest()["versions"]):
            if version.get("learned") == trigger:
                return dict(version.get("parameters") or {})
        return {}

    # --- writing ------------------------------------------------------------------------------------------------

    @classmethod
    def named(cls, root: Path, name: str) -> MemoryStore:
        """The memory `name` under `root`, as it is on disk (nothing is created)."""
        return cls(Path(root) / safe_file_name(name, "memory name"))

    @classmethod
    def open_or_create(cls, root: Path, name: str, model: Model, trains: str = DEFAULT_TRAINS) -> MemoryStore:
        """The memory `name` under `root`; a new, empty one (version 0, made for `model`, its concepts training
        `trains`) if there is none. An existing memory keeps what it trains: asking for another is an error."""
        if trains not in TRAINS:
            raise InputError(f"trains '{trains}' is not one of {', '.join(TRAINS)}.")
        store = cls.named(root, name)
        if not (store.folder / MANIFEST).exists():
            make_folder(store.folder)
            with store.writer():
                if not (store.folder / MANIFEST).exists():
                    store._write_manifest({"format_version": FORMAT_VERSION, "family": model.family,
                                           "base_fingerprint": model.fingerprint(), "trains": trains, "current": 0,
                                           "versions": []})
        store.check_fits(model)
        if (made_with := store.trains()) != trains:
            raise InputError(f"memory '{store.name}' trains {made_with} (chosen when it was made; its concepts are "
                             f"kept as {made_with} offsets); set trains to {made_with}, or use a new memory name.")
        return store

    @contextlib.contextmanager
    def writer(self, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
        """Hold the memory's lock for the block: one writer at a time, exclusive at the file-system level (the lock
        of a writer that died is released with it). A second writer waits up to `wait` seconds, then fails with a
        message."""
        if not self.folder.is_dir():
            raise InputError(f"memory '{self.name}' is no longer at {self.folder} (deleted or moved after it was "
                             "opened); put the folder back, or change the memory's name to start a new one.")

        def busy(holder: int | None) -> InputError:
            return InputError(f"memory '{self.name}' is being written by another process (pid {holder}); wait for "
                              "it to finish and queue again.")

        with exclusive_lock(self.folder / LOCK, wait, busy):
            yield

    def commit(self, concept: Concept, bank: MemoryBank, learned: str, parameters: dict) -> MemoryState:
        """Write the next version (the caller holds the lock) and make it current."""
        info = self.manifest()
        number = max([int(v["version"]) for v in info["versions"]] + [0]) + 1

        def fill(folder: Path) -> None:
            save_concept(concept, folder / CONCEPT_FILE)
            bank.save(folder / BANK_FILE)

        atomic_folder(self.folder / _version_folder(number), fill)
        info["versions"].append({"version": number, "learned": learned, "parameters": parameters,
                                 "concepts": [{"trigger": t.word, "class_word": t.class_word}
                                              for t in concept.triggers]})
        info["current"] = number
        self._write_manifest(info)
        return MemoryState(number, concept, bank)

    def prune(self, keep: int = 2) -> list[int]:
        """Remove all versions but the newest `keep` (and the current one); returns the removed numbers."""
        with self.writer():
            info = self.manifest()
            numbers = sorted(int(v["version"]) for v in info["versions"])
            removed = [n for n in numbers[:-keep] if n != int(info["current"])] if keep else []
            for number in removed:
                with guarded(self.folder / _version_folder(number), "remove the old version"):
                    shutil.rmtree(self.folder / _version_folder(number))
            info["versions"] = [v for v in info["versions"] if int(v["version"]) not in removed]
            self._write_manifest(info)
            return removed

    def _write_manifest(self, info: dict) -> None:
        data = json.dumps(info, indent=1).encode()
        atomic_write(self.folder / MANIFEST, lambda f: f.write(data), "overwrite")


def _version_folder(number: int) -> str:
    return f"v{number:04d}"
