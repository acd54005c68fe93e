import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.management.base import BaseCommand

from data_access import services
from data_access.db import check_media_root
from data_access.management.base import user_errors
from tuning.errors import DataError

# Signals that stop an import: each becomes an exception so that the half-copied files
# are removed and the rows rolled back, instead of the process dying mid-copy.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ImportStopped(BaseException):
    """A stop signal arrived during the import (BaseException: nothing may catch it
    as an ordinary error on its way out)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Command(BaseCommand):
    help = (
        "Import an image folder as a theme: one sub-folder per class, .png/.jpg/.jpeg/.bmp "
        "images (grayscale, RGB or RGBA) anywhere below it; other files are ignored. "
        "Symbolic links, images outside the class folders and images that cannot be "
        "decoded are skipped with a warning (--strict: refused). "
        "Prints the new theme's id on the last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("directory", help="folder holding one sub-folder per class")
        parser.add_argument("--name", required=True, help="theme name (unique)")
        parser.add_argument("--description", default="", help="free text")
        parser.add_argument(
            "--strict", action="store_true",
            help="refuse the whole import at the first file that would be skipped")

    def handle(self, *args, directory, name, description, strict, **options):
        skipped: list[DataError] = []
        ignored: list[str] = []

        def warn(error: DataError) -> None:
            skipped.append(error)
            self.stderr.write(f"warning: skipped {error.one_line()}")

        def note(notice: str) -> None:
            ignored.append(notice)
            self.stderr.write(f"warning: {notice}")

        try:
            with user_errors():
                check_media_root()   # before any row or file is written
                with _stop_signals_raise():
                    theme = services.theme_import_folder(
                        directory=directory, name=name, description=description,
                        strict=strict, on_skip=warn, on_ignore=note)
                summary = _summary(theme, len(skipped), len(ignored))
        except ImportStopped as stop:
            self.stderr.write(f"import_theme: stopped by {signal.Signals(stop.signum).name}; "
                              "nothing was imported.")
            raise SystemExit(128 + stop.signum) from None
        self.stdout.write(summary)
        self.stdout.write(str(theme.id))


def _summary(theme, skipped: int, ignored: int = 0) -> str:
    images = theme.images.count()
    classes = theme.images.values("label").distinct().count()
    line = f"Imported theme '{theme.name}' (id {theme.id}): {images} images, {classes} classes"
    if skipped:
        line += f"; {skipped} file(s) skipped"
    if ignored:
        line += f"; {ignored} hidden folder(s) ignored"
    return f"{line} (see the warnings above)" if skipped or ignored else line


@contextmanager
def _stop_signals_raise() -> Iterator[None]:
    # Signal handlers can only be set from the main thread (not, say, a web request's).
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        # The clean-up that follows must not be cut short by a second signal.
        for other in STOP_SIGNALS:
            signal.signal(other, signal.SIG_IGN)
        raise ImportStopped(signum)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
