"""Shared constants of the e2e harness: domain, loopback host, test accounts,
default ports.  Owns nothing else; every other module imports from here so a
port or password is written down exactly once.

Ports (on 127.0.0.1 unless the table says otherwise):

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
SITE_C2S_PORT          25500  s2s test sites (sites.py): c2s, on 127.0.1.1 (A) / 127.0.2.1 (B)
SITE_S2S_PORT          25501  same hosts: the sites' plaintext s2s
SITE_DNS_PORT          25502  same hosts: each site's private knotd (UDP+TCP)
SITE_EJABBERD_DIST     25503  127.0.0.1: Erlang distribution of an ejabberd site
SITE_OUTBOUND_PORT     25510  127.0.1.2 / 127.0.2.2: where a site's outbound s2s goes
GATEWAY_WEB_PORT       25500  stanzawall WebSocket listener -> Prosody (test_web.py)
GATEWAY_WEB_PAGE_PORT  25501  the test page's HTTP server (its Origin)
GATEWAY_WEB_C2S_PORT   25502  the same gateway's STARTTLS listener (the slixmpp peer)
GATEWAY_ADMIN_PORT     25550  stanzawall -> Prosody with the admin API (test_admin.py)
GATEWAY_ADMIN_API_PORT 25551  its [admin] listener (API, dashboard, /metrics)
GATEWAY_ADMIN_TLS_PORT 25552  stanzawall -> Prosody with an HTTPS/mTLS admin listener (test_admin_tls.py)
GATEWAY_ADMIN_HTTPS_PORT 25553  its [admin] listener over TLS (client certificates from a CA of its own)
GATEWAY_BOSH_PORT      25560  stanzawall BOSH listener -> Prosody (test_bosh.py)
GATEWAY_BOSH_PAGE_PORT 25561  the BOSH test page's HTTP server (its Origin)
GATEWAY_BOSH_C2S_PORT  25562  the same gateway's STARTTLS listener (the slixmpp peer)
=====================  =====  ==============================================

The s2s sites are the one exception to "all on 127.0.0.1": each site has its own loopback
addresses (see sites.py), so that two servers can both use the same port numbers.
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
SITE_C2S_PORT = 25500
SITE_S2S_PORT = 25501
SITE_DNS_PORT = 25502
SITE_EJABBERD_DIST_PORT = 25503
SITE_OUTBOUND_PORT = 25510
GATEWAY_WEB_PORT = 25500
GATEWAY_WEB_PAGE_PORT = 25501
GATEWAY_WEB_C2S_PORT = 25502
GATEWAY_ADMIN_PORT = 25550
GATEWAY_ADMIN_API_PORT = 25551
GATEWAY_ADMIN_TLS_PORT = 25552
GATEWAY_ADMIN_HTTPS_PORT = 25553
GATEWAY_BOSH_PORT = 25560
GATEWAY_BOSH_PAGE_PORT = 25561
GATEWAY_BOSH_C2S_PORT = 25562

#: Upper bound for a server to start accepting connections.
START_TIMEOUT = 30.0
#: Upper bound for a server to stop after SIGTERM / ctl stop, before SIGKILL.
STOP_TIMEOUT = 15.0
