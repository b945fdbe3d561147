"""The {{name}} function. VoltRun calls `handler` with the invocation's JSON event."""


def handler(event, context):
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    # Anything printed goes to the execution's logs: `voltrun logs EXECUTION_ID`.
    print(f"greeting {name}")
    return {"message": f"Hello, {name}!"}
