"""HTTP hardening and plumbing: access rules, body limits and the JSON guard, connections, OpenAPI."""
