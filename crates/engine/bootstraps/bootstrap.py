"""VoltRun's Python runtime: a Lambda Runtime API client using only the standard library.

It imports the handler named by _HANDLER (module.function) from LAMBDA_TASK_ROOT, then loops:
GET /runtime/invocation/next, call handler(event, context), POST the JSON result (or the error).
Initialisation failures are reported to /runtime/init/error with Lambda's error types.
"""

import importlib
import json
import os
import socket
import sys
import time

API = os.environ["AWS_LAMBDA_RUNTIME_API"]
BASE = "/2018-06-01/runtime"
HOST, PORT = API.rsplit(":", 1)


class Response:
    """A response's status and headers (names in lower case)."""

    def __init__(self, status, headers):
        self.status = status
        self.headers = headers

    def getheader(self, name, default=None):
        return self.headers.get(name.lower(), default)


class Client:
    """A small HTTP/1.1 client on one kept-alive connection to the Runtime API. http.client parses
    every response's headers with the email package, which costs several times more than the rest of
    an invocation of a small handler."""

    def __init__(self):
        self.sock = None
        self.reader = None

    def close(self):
        if self.sock is not None:
            try:
                self.reader.close()
                self.sock.close()
            except OSError:
                pass
        self.sock = self.reader = None

    def connect(self):
        self.close()
        sock = socket.create_connection((HOST, int(PORT)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.reader = sock, sock.makefile("rb")

    def line(self):
        line = self.reader.readline(65537)
        if not line.endswith(b"\n"):
            raise ConnectionError("the Runtime API connection broke off")
        return line

    def read_exact(self, n):
        data = self.reader.read(n)
        if len(data) != n:
            raise ConnectionError("the Runtime API connection broke off")
        return data

    def exchange(self, method, path, body, headers):
        if self.sock is None:
            self.connect()
        head = [f"{method} {path} HTTP/1.1", f"Host: {API}"]
        if body is not None:
            head.append(f"Content-Length: {len(body)}")
        head.extend(f"{name}: {value}" for name, value in headers.items())
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
        status = int(self.line().split(None, 2)[1])
        fields = {}
        while True:
            line = self.line()
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        if fields.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.line().split(b";", 1)[0], 16)
                if size == 0:
                    while self.line() not in (b"\r\n", b"\n"):  # trailers
                        pass
                    break
                chunks.append(self.read_exact(size))
                self.line()
            data = b"".join(chunks)
        elif "content-length" in fields:
            data = self.read_exact(int(fields["content-length"]))
        elif status in (204, 304) or status < 200:
            data = b""
        else:  # delimited by the end of the connection
            data = self.reader.read()
            fields["connection"] = "close"
        if fields.get("connection", "").lower() == "close":
            self.close()
        return Response(status, fields), data

    def request(self, method, path, body=None, headers=None):
        for attempt in range(3):
            try:
                return self.exchange(method, path, body, headers or {})
            except (OSError, ValueError, IndexError):
                self.close()
                if attempt == 2:
                    raise
                time.sleep(0.01)


class InitError(Exception):
    def __init__(self, error_type, message):
        super().__init__(message)
        self.error_type = error_type


class Context:
    def __init__(self, request_id, deadline_ms, arn):
        self.aws_request_id = request_id
        self.invoked_function_arn = arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "/voltrun/" + self.function_name)
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        return max(0, int(self._deadline_ms - time.time() * 1000))


def error_body(error_type, message, tb=None):
    return json.dumps({"errorType": error_type, "errorMessage": message, "stackTrace": tb or []}).encode()


def load_handler():
    handler = os.environ.get("_HANDLER", "")
    module_path, _, function_name = handler.rpartition(".")
    sys.path.insert(0, os.environ.get("LAMBDA_TASK_ROOT", "/var/task"))
    module_name = module_path.replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as e:
        raise InitError("Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_path}': {e}") from e
    except ImportError as e:
        raise InitError("Runtime.ImportModuleError", f"Unable to import module '{module_path}': {e}") from e
    except Exception as e:  # an exception raised by the module's top-level code
        raise InitError("Runtime.Unhandled", f"{type(e).__name__}: {e}") from e
    function = getattr(module, function_name, None)
    if not callable(function):
        raise InitError("Runtime.HandlerNotFound", f"Handler '{function_name}' missing on module '{module_path}'")
    return function


def main():
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    client = Client()
    try:
        handler = load_handler()
    except InitError as e:
        print(f"[ERROR] {e.error_type}: {e}", file=sys.stderr)
        client.request("POST", f"{BASE}/init/error", error_body(e.error_type, str(e)),
                       {"Lambda-Runtime-Function-Error-Type": e.error_type})
        sys.exit(1)

    while True:
        response, body = client.request("GET", f"{BASE}/invocation/next")
        request_id = response.getheader("Lambda-Runtime-Aws-Request-Id")
        deadline = int(response.getheader("Lambda-Runtime-Deadline-Ms", "0"))
        arn = response.getheader("Lambda-Runtime-Invoked-Function-Arn", "")
        try:
            event = json.loads(body) if body else {}
            result = handler(event, Context(request_id, deadline, arn))
        except Exception as e:
            import traceback  # only on this path: it costs milliseconds at every start

            tb = traceback.format_exception(type(e), e, e.__traceback__)
            print("".join(tb), end="", file=sys.stderr)
            client.request("POST", f"{BASE}/invocation/{request_id}/error",
                           error_body(type(e).__name__, str(e), tb[1:]),
                           {"Lambda-Runtime-Function-Error-Type": "Unhandled"})
            continue
        try:
            payload = json.dumps(result).encode()
        except (TypeError, ValueError) as e:
            client.request("POST", f"{BASE}/invocation/{request_id}/error",
                           error_body("Runtime.MarshalError", f"Unable to marshal response: {e}"),
                           {"Lambda-Runtime-Function-Error-Type": "Runtime.MarshalError"})
            continue
        client.request("POST", f"{BASE}/invocation/{request_id}/response", payload,
                       {"Content-Type": "application/json"})


if __name__ == "__main__":
    main()
