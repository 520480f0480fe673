"""How clients reach the server: streamable HTTP (`http`) and stdio (`stdio`). Each builds the
request's tenant once (the gate, or the process's key) and hands over to the SDK."""
