"""Start a command in its own session and exit at once, printing the command's pid.

Run as `python _detach.py LOG COMMAND...` by web/launch/local.py. Because this helper
exits right away, the study process is adopted by init: the web server never has to
reap it, so no zombie is left behind whichever worker process launched it, and a web
server restart does not touch the study.

SIGINT goes back to its default first: a server started in the background (`&`) has it
ignored, its children inherit that, and the study's driver would never hear a cancel.
"""

import signal
import subprocess
import sys


def main() -> None:
    log_path, command = sys.argv[1], sys.argv[2:]
    # Inherited through exec: the driver's Python then turns SIGINT into KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   close_fds=True)
    print(process.pid, flush=True)


if __name__ == "__main__":
    main()
