"""Shared constants of the e2e harness: domain, loopback host, test accounts,
default ports.  Owns nothing else; every other module imports from here so a
port or password is written down exactly once.

Ports (all on 127.0.0.1; nothing in the harness listens anywhere else):

=====================  =====  ==============================================
name                   port   what
=====================  =====  ==============================================
PROSODY_PORT           15222  private Prosody, plaintext c2s, no STARTTLS
PROSODY_TLS_PORT       15225  2nd private Prosody, c2s offering STARTTLS
PROSODY_DIRECT_TLS     15226  same instance, XEP-0368 direct TLS c2s
PROSODY_SM_PORT        15230  3rd private Prosody, plaintext, mod_smacks (policy tests)
EJABBERD_TLS_PORT      15322  private ejabberd c2s, ``starttls: true``
EJABBERD_PLAIN_PORT    15323  same instance, c2s ``starttls: false``
EJABBERD_PROXY_PORT    15324  same instance, plain c2s, PROXY protocol required
EJABBERD_DIST_PORT     15399  ejabberd's Erlang distribution (no epmd used)
GATEWAY_C2S_PORT       25222  stanzawall STARTTLS listener -> Prosody
GATEWAY_DIRECT_PORT    25223  stanzawall direct-TLS listener -> Prosody
GATEWAY_EJABBERD_PORT  25322  stanzawall -> ejabberd (backend STARTTLS)
GATEWAY_EJABBERD_PROXY 25324  stanzawall -> ejabberd (PROXY protocol v2)
GATEWAY_SCRATCH_PORT   2542x  per-test gateways (reload, shutdown)
GATEWAY_POLICY_PORT    25460  stanzawall with the policy example (test_policy.py)
GATEWAY_POLICY_ADMIN   25461  its [admin] endpoint (GET /metrics)
GATEWAY_TEXT_PORT      25470  stanzawall -> Prosody, text policy (test_policy_text.py)
GATEWAY_TEXT_EJABBERD  25472  stanzawall -> ejabberd, same policy
GATEWAY_ADMIN_PORT     25550  stanzawall -> Prosody with the admin API (test_admin.py)
GATEWAY_ADMIN_API_PORT 25551  its [admin] listener (API, dashboard, /metrics)
=====================  =====  ==============================================
"""

HOST = "127.0.0.1"
DOMAIN = "example.test"

#: Test accounts, registered on every private server: user -> password.
USERS: dict[str, str] = {
    "alice": "alice-secret-1",
    "bob": "bob-secret-2",
    "carol": "carol-secret-3",
    "dave": "dave-secret-4",
}

PROSODY_PORT = 15222
PROSODY_TLS_PORT = 15225
PROSODY_DIRECT_TLS = 15226
PROSODY_SM_PORT = 15230
EJABBERD_TLS_PORT = 15322
EJABBERD_PLAIN_PORT = 15323
EJABBERD_PROXY_PORT = 15324
EJABBERD_DIST_PORT = 15399
GATEWAY_C2S_PORT = 25222
GATEWAY_DIRECT_PORT = 25223
GATEWAY_EJABBERD_PORT = 25322
GATEWAY_EJABBERD_PROXY_PORT = 25324
GATEWAY_SCRATCH_PORT = 25420
GATEWAY_POLICY_PORT = 25460
GATEWAY_POLICY_ADMIN = 25461
GATEWAY_TEXT_PORT = 25470
GATEWAY_TEXT_EJABBERD_PORT = 25472
GATEWAY_ADMIN_PORT = 25550
GATEWAY_ADMIN_API_PORT = 25551

#: Upper bound for a server to start accepting connections.
START_TIMEOUT = 30.0
#: Upper bound for a server to stop after SIGTERM / ctl stop, before SIGKILL.
STOP_TIMEOUT = 15.0
