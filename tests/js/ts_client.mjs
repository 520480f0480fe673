// Drives a tenant_mcp server with the official TypeScript SDK client, as one tenant.
// Usage: node ts_client.mjs URL KEY NOTE_TITLE [OTHER_NOTE_ID]
// Prints one JSON object with what this tenant saw; the Python test asserts on it.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, key, title, otherNoteId] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${key}` } },
});
const client = new Client({ name: "tenant-mcp-ts-test", version: "1.0.0" });
await client.connect(transport);

const text = (result) => result.content.map((c) => c.text ?? "").join("");
const out = { protocolVersion: transport.protocolVersion ?? null };
out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
out.whoami = (await client.callTool({ name: "whoami", arguments: {} })).structuredContent;
const created = await client.callTool({ name: "create_note", arguments: { title, body: `body of ${title}` } });
out.created = created.structuredContent;
out.notes = (await client.callTool({ name: "list_notes", arguments: {} })).structuredContent.result;
out.profile = JSON.parse((await client.readResource({ uri: "profile://me" })).contents[0].text);
out.ownBody = (await client.readResource({ uri: `notes://${out.created.id}` })).contents[0].text;
out.prompt = (await client.getPrompt({ name: "summarize_notes", arguments: {} })).messages[0].content.text;
if (otherNoteId) {
  const other = await client.callTool({ name: "get_note", arguments: { note_id: Number(otherNoteId) } });
  out.otherGet = { isError: other.isError ?? false, text: text(other) };
  try {
    await client.readResource({ uri: `notes://${otherNoteId}` });
    out.otherRead = "read succeeded";
  } catch (err) {
    out.otherRead = { code: err.code, message: err.message };
  }
}
await transport.terminateSession().catch(() => {});
await client.close();
console.log(JSON.stringify(out));
