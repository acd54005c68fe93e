"""launch.py with --record-id N, for the tests, until launch.py has the flag itself.

It does what launch.py must do with the flag: record through
DjangoStudyRecorder(study_id=N), so that the study fills in the web UI's pending row.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import launch  # noqa: E402


def main() -> int:
    args = sys.argv[1:]
    at = args.index("--record-id")
    record_id = int(args[at + 1])
    del args[at:at + 2]

    def make_recorder():
        from data_access.recorder import DjangoStudyRecorder

        return DjangoStudyRecorder(study_id=record_id)

    launch.make_recorder = make_recorder
    return launch.main(args)


if __name__ == "__main__":
    sys.exit(main())
