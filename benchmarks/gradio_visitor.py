"""One visitor of the served app, in a process of its own (as a browser is): `bench_serving.py` starts one per
client, so that the clients' HTTP and stream parsing do not take the server's interpreter lock, which no real
visitor does.

    python benchmarks/gradio_visitor.py URL

Protocol (JSON lines): it prints {"ready": true} once connected; then, for each request read on stdin (the
`/chat` inputs), it calls `/clear` and `/chat` and prints {"text": ...} for each update of the reply and
{"end": true, "error": ...} at its end. After each request it reads one control line: "done", or "cancel"
(the reader stopped, at the end of a measured window): then the job is cancelled, as `job.cancel()` does
in-process, the visitor says {"end": true, ...} and leaves, as a browser's tab is closed. (It does not wait
for the cancelled job to end: `gradio_client` may never end a job cancelled while it was still queued.)
"""
from __future__ import annotations

import json
import os
import sys
import threading

from gradio_client import Client


def message_text(message: dict) -> str:
    """A chatbot message's text (Gradio 6 sends content as a list of typed parts)."""
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def say(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def follow_control(job) -> None:
    """The line that follows a request: "cancel" cancels its job and ends the visitor."""
    if sys.stdin.readline().strip() == "cancel":
        job.cancel()
        say(end=True, error="cancelled")
        os._exit(0)  # the job's own iteration may never end (see above)


def main(url: str) -> None:
    visitor = Client(url, verbose=False, httpx_kwargs={"timeout": 600})
    say(ready=True)
    for line in sys.stdin:
        request = json.loads(line)
        visitor.predict(api_name="/clear")  # every request one question
        job = visitor.submit(**request, api_name="/chat")
        control = threading.Thread(target=follow_control, args=(job,))
        control.start()
        error = None
        try:
            for chatbot in job:  # /chat returns the chatbot alone
                reply = [message_text(m) for m in chatbot if m["role"] == "assistant" and not m.get("metadata")]
                if reply and reply[-1]:
                    say(text=reply[-1])
        except Exception as err:  # a cancelled job ends its iteration with an error
            error = repr(err)
        say(end=True, error=error)
        control.join()


if __name__ == "__main__":
    main(sys.argv[1])
