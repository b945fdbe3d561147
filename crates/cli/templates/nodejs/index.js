// The {{name}} function. VoltRun calls `handler` with the invocation's JSON event.
exports.handler = async (event, context) => {
  const name = (event && event.name) || "world";
  // Anything logged goes to the execution's logs: `voltrun logs EXECUTION_ID`.
  console.log(`greeting ${name}`);
  return { message: `Hello, ${name}!` };
};
