"""VoltRun's Python runtime: a Lambda Runtime API client using only the standard library.

It imports the handler named by _HANDLER (module.function) from LAMBDA_TASK_ROOT, then loops:
GET /runtime/invocation/next, call handler(event, context), POST the JSON result (or the error).
Initialisation failures are reported to /runtime/init/error with Lambda's error types.
"""

import importlib
import importlib.machinery
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


# The invocation in progress, for log records (Lambda's `aws_request_id` attribute).
REQUEST_ID = ""
TENANT_ID = None
# Lambda's log format for the function (its advanced logging controls): JSON or plain text.
JSON_LOGS = os.environ.get("AWS_LAMBDA_LOG_FORMAT", "").upper() == "JSON"
UTC_SECONDS = "%Y-%m-%dT%H:%M:%SZ"
# A log record's own attributes, never copied into a JSON line as `extra` fields.
RECORD_FIELDS = {
    "name", "msg", "args", "levelname", "levelno", "pathname", "filename", "module", "exc_info",
    "exc_text", "stack_info", "lineno", "funcName", "created", "msecs", "relativeCreated", "thread",
    "threadName", "processName", "process", "aws_request_id", "tenant_id",
}


def json_formatter(logging):
    """Lambda's JSON log lines: `timestamp`, `level` (rounded down to a standard level), `message`
    (a dict logged without arguments stays an object), `logger`, `requestId`, the exception's
    `errorType`, `errorMessage`, `stackTrace` and `location` when one is logged, `tenantId` when the
    invocation has one, then any `extra` attributes; fields without a value are left out."""
    import traceback
    encode = json.JSONEncoder(ensure_ascii=False, default=str).encode

    class JsonFormatter(logging.Formatter):
        def format(self, record):
            record.levelno = min(50, max(0, record.levelno)) // 10 * 10
            record.levelname = logging.getLevelName(record.levelno)
            exc = record.exc_info
            fields = {
                "timestamp": self.formatTime(record, UTC_SECONDS),
                "level": record.levelname,
                "message": record.msg if isinstance(record.msg, dict) and not record.args
                else record.getMessage(),
                "logger": record.name,
                "stackTrace": traceback.format_tb(exc[2]) if exc else None,
                "errorType": exc[0].__name__ if exc else None,
                "errorMessage": str(exc[1]) if exc else None,
                "requestId": getattr(record, "aws_request_id", None),
                "location": f"{record.pathname}:{record.funcName}:{record.lineno}" if exc else None,
            }
            if getattr(record, "tenant_id", None) is not None:
                fields["tenantId"] = record.tenant_id
            fields.update((k, v) for k, v in record.__dict__.items()
                          if k not in RECORD_FIELDS and k not in fields)
            return encode({k: v for k, v in fields.items() if v is not None}) + "\n"

    return JsonFormatter()


def install_lambda_logging(logging):
    """Lambda's handler on the root logger, as its Python runtime installs it: each record written to
    stdout as `[LEVEL]\t<UTC time>\t<request id>\t<message>` (or as one JSON object where the
    function's log format is JSON), with timestamps in UTC, and the root level set from
    AWS_LAMBDA_LOG_LEVEL when that names one (TRACE counts as DEBUG)."""

    class LambdaHandler(logging.Handler):
        def emit(self, record):
            try:
                sys.stdout.write(self.format(record))
            except Exception:
                self.handleError(record)

    class RequestId(logging.Filter):
        def filter(self, record):
            record.aws_request_id = REQUEST_ID
            record.tenant_id = TENANT_ID
            return True

    logging.Formatter.converter = time.gmtime
    handler = LambdaHandler()
    handler.setFormatter(json_formatter(logging) if JSON_LOGS else logging.Formatter(
        "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n",
        "%Y-%m-%dT%H:%M:%S"))
    handler.addFilter(RequestId())
    root = logging.getLogger()
    level = {"TRACE": "DEBUG"}.get(os.environ.get("AWS_LAMBDA_LOG_LEVEL", "").upper(),
                                   os.environ.get("AWS_LAMBDA_LOG_LEVEL", "").upper())
    if level in logging._nameToLevel:
        root.setLevel(level)
    root.addHandler(handler)


class LoggingHook:
    """Installs Lambda's logging when the function first imports `logging`: importing it costs about
    14 ms, which every cold start would pay, and most functions never import it."""

    def find_spec(self, name, path=None, target=None):
        if name != "logging":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module
        hook = self

        def exec_module(module):
            # Gone once `logging` is really imported (a find_spec alone, as importlib.util.find_spec
            # does, imports nothing).
            if hook in sys.meta_path:
                sys.meta_path.remove(hook)
            load(module)
            # A function's own module named `logging` is not the standard library's: left alone.
            if all(hasattr(module, n) for n in ("Handler", "Filter", "Formatter", "getLogger")):
                install_lambda_logging(module)

        spec.loader.exec_module = exec_module
        return spec


class InitError(Exception):
    def __init__(self, error_type, message, stack=()):
        super().__init__(message)
        self.error_type = error_type
        self.stack = list(stack)


class Fields:
    """An object with exactly the given attributes, None unless set (Lambda's CognitoIdentity,
    ClientContext and Client)."""

    def __init__(self, names, values=None):
        for name in names:
            setattr(self, name, (values or {}).get(name))


IDENTITY_FIELDS = ("cognito_identity_id", "cognito_identity_pool_id")
CLIENT_FIELDS = ("installation_id", "app_title", "app_version_name", "app_version_code", "app_package_name")


class Context:
    """The handler's context, with Lambda's attributes: `identity` is always an object (its fields
    None unless the invocation carried a Cognito identity), `client_context` only when the invocation
    carried one."""

    def __init__(self, request_id, deadline_ms, arn, client_context=None, identity=None, tenant_id=None):
        self.aws_request_id = request_id
        self.invoked_function_arn = arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.tenant_id = tenant_id
        self.identity = Fields(IDENTITY_FIELDS, {
            "cognito_identity_id": (identity or {}).get("cognitoIdentityId"),
            "cognito_identity_pool_id": (identity or {}).get("cognitoIdentityPoolId"),
        })
        self.client_context = None
        if isinstance(client_context, dict):
            self.client_context = Fields(("custom", "env", "client"), client_context)
            if isinstance(self.client_context.client, dict):
                self.client_context.client = Fields(CLIENT_FIELDS, self.client_context.client)
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        return max(0, int(self._deadline_ms - time.time() * 1000))

    def log(self, msg):
        """Writes `msg` to the function's log as it is (no newline added), as Lambda's does."""
        sys.stdout.write(str(msg))

    def w3c(self):
        """The W3C trace context the invocation carried: none here (no client context carries one)."""
        return {}


def log_error(error_type, message, stack):
    """Logs an unhandled error as Lambda's runtime does: one line on stdout, `[ERROR] <type>:
    <message>` with `Traceback (most recent call last):` and the stack after it, separated by carriage
    returns so that it stays one log event, its indentation as no-break spaces; or, where the log
    format is JSON, one JSON object (`timestamp`, `level`, `errorMessage`, `errorType`, `requestId`,
    `stackTrace`)."""
    if JSON_LOGS:
        print(json.dumps({
            "timestamp": time.strftime(UTC_SECONDS, time.gmtime()),
            "level": "ERROR",
            "errorMessage": message,
            "errorType": error_type,
            "requestId": REQUEST_ID,
            "stackTrace": stack,
        }))
        return
    head = "[ERROR]"
    if error_type:
        head += " " + error_type
    if message:
        head += (":" if error_type else "") + " " + message
    lines = [head, "Traceback (most recent call last):"]
    for element in stack:
        for line in element.splitlines() or [""]:
            indent = len(line) - len(line.lstrip(" "))
            lines.append("\u00a0" * indent + line[indent:])
    sys.stdout.write("\r".join(lines) + "\n")


def user_stack(tb):
    """The traceback's frames from the first that is not this bootstrap's, each formatted as Python
    prints it (Lambda's error documents and log lines leave the runtime's own calls out)."""
    import traceback  # only on error paths: it costs milliseconds at every start

    frames = traceback.extract_tb(tb)
    while frames and frames[0].filename == __file__:
        frames.pop(0)
    # As plain tuples, as Lambda's runtime formats them: without the column markers (`^^^`) Python
    # adds under a frame's line when it knows the columns.
    return traceback.format_list([(f.filename, f.lineno, f.name, f.line) for f in frames])


def json_header(response, name):
    value = response.getheader(name)
    return json.loads(value) if value else None


def error_body(error_type, message, tb=None):
    return json.dumps({"errorType": error_type, "errorMessage": message, "stackTrace": tb or []}).encode()


def load_handler():
    handler = os.environ.get("_HANDLER", "")
    module_path, _, function_name = handler.rpartition(".")
    # Lambda's module path: the function's code, then its layers' (`/opt/python/lib/<version>/
    # site-packages` and `/opt/python`), then the runtime's.
    site = f"/opt/python/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
    sys.path[0:0] = [os.environ.get("LAMBDA_TASK_ROOT", "/var/task"), site, "/opt/python"]
    module_name = module_path.replace("/", ".")
    if module_path.split(".")[0] in sys.builtin_module_names:
        raise InitError("Runtime.BuiltInModuleConflict",
                        f"Cannot use built-in module {module_path} as a handler module")
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as e:
        raise InitError("Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_path}': {e}",
                        [f'  File "{e.filename}" Line {e.lineno}\n    {e.text}']) from e
    except ImportError as e:
        raise InitError("Runtime.ImportModuleError", f"Unable to import module '{module_path}': {e}") from e
    except Exception as e:  # an exception raised by the module's top-level code, reported as its own
        raise InitError(type(e).__name__, str(e), user_stack(e.__traceback__)) from e
    function = getattr(module, function_name, None)
    if not callable(function):
        raise InitError("Runtime.HandlerNotFound", f"Handler '{function_name}' missing on module '{module_path}'")
    return function


def main():
    global REQUEST_ID, TENANT_ID
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    if "logging" in sys.modules:
        install_lambda_logging(sys.modules["logging"])
    else:
        sys.meta_path.insert(0, LoggingHook())
    client = Client()
    try:
        handler = load_handler()
    except InitError as e:
        log_error(e.error_type, str(e), e.stack)
        client.request("POST", f"{BASE}/init/error", error_body(e.error_type, str(e), e.stack),
                       {"Lambda-Runtime-Function-Error-Type": e.error_type})
        sys.exit(1)

    while True:
        response, body = client.request("GET", f"{BASE}/invocation/next")
        request_id = response.getheader("Lambda-Runtime-Aws-Request-Id")
        REQUEST_ID = request_id
        TENANT_ID = response.getheader("Lambda-Runtime-Aws-Tenant-Id")
        deadline = int(response.getheader("Lambda-Runtime-Deadline-Ms", "0"))
        arn = response.getheader("Lambda-Runtime-Invoked-Function-Arn", "")
        try:
            context = Context(request_id, deadline, arn,
                              json_header(response, "Lambda-Runtime-Client-Context"),
                              json_header(response, "Lambda-Runtime-Cognito-Identity"),
                              response.getheader("Lambda-Runtime-Aws-Tenant-Id"))
            event = json.loads(body) if body else {}
            result = handler(event, context)
        except Exception as e:
            stack = user_stack(e.__traceback__)
            log_error(type(e).__name__, str(e), stack)
            client.request("POST", f"{BASE}/invocation/{request_id}/error",
                           error_body(type(e).__name__, str(e), stack),
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
