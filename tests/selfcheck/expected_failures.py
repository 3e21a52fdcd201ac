"""Which scenario tests each refgateway fault must make fail, and no others.

Keys are fault names (``python -m refgateway --list-faults``); values are patterns
over node ids (``*`` matches anything; nothing else is special) relative to scenarios/. A fault's run must fail exactly the tests
its patterns match, every pattern must match at least one failed test, and every scenario
test must be matched by some fault: a check that no fault can make fail is a defect.
"""

EXPECTED_FAILURES: dict[str, list[str]] = {
    "accept-any-client-cert": [
        "test_frontend_default.py::test_untrusted_client_certificate_is_rejected[*]",
        "test_frontend_default.py::test_expired_client_certificate_is_rejected[*]",
        "test_frontend_insecure_fallback.py::test_default_port_still_rejects_unverified_clients[untrusted certificate]",
        "test_frontend_per_port.py::test_default_ca_client_is_rejected_on_the_per_port_port",
        "test_frontend_per_port.py::test_per_port_ca_client_is_rejected_on_the_default_port",
    ],
    "accept-no-client-cert": [
        "test_frontend_default.py::test_no_client_certificate_is_rejected[*]",
        "test_frontend_insecure_fallback.py::test_condition_is_removed_when_the_mode_is_reverted",
        "test_frontend_insecure_fallback.py::test_default_port_still_rejects_unverified_clients[no certificate]",
        "test_frontend_per_port.py::test_no_client_certificate_is_rejected_on_both_ports[*]",
    ],
    "accept-expired-client-cert": [
        "test_frontend_default.py::test_expired_client_certificate_is_rejected[*]",
        "test_frontend_insecure_fallback.py::test_backend_is_told_what_was_verified[expired certificate]",
    ],
    "ignore-per-port": [
        "test_frontend_insecure_fallback.py::test_backend_is_told_what_was_verified[expired certificate]",
        "test_frontend_insecure_fallback.py::test_backend_is_told_what_was_verified[no certificate]",
        "test_frontend_insecure_fallback.py::test_backend_is_told_what_was_verified[untrusted certificate]",
        "test_frontend_insecure_fallback.py::test_client_cannot_forge_the_verification_result[*]",
        "test_frontend_insecure_fallback.py::test_condition_is_removed_when_the_mode_is_reverted",
        "test_frontend_insecure_fallback.py::test_fallback_port_lets_every_client_in[expired certificate]",
        "test_frontend_insecure_fallback.py::test_fallback_port_lets_every_client_in[no certificate]",
        "test_frontend_insecure_fallback.py::test_fallback_port_lets_every_client_in[untrusted certificate]",
        "test_frontend_per_port.py::test_default_ca_client_is_rejected_on_the_per_port_port",
        "test_frontend_per_port.py::test_no_client_certificate_is_rejected_on_both_ports[443]",
        "test_frontend_per_port.py::test_per_port_ca_client_is_accepted_on_the_per_port_port",
    ],
    "reject-insecure-fallback": [
        "test_frontend_insecure_fallback.py::test_backend_is_told_what_was_verified[expired certificate]",
        "test_frontend_insecure_fallback.py::test_backend_is_told_what_was_verified[no certificate]",
        "test_frontend_insecure_fallback.py::test_backend_is_told_what_was_verified[untrusted certificate]",
        "test_frontend_insecure_fallback.py::test_client_cannot_forge_the_verification_result[*]",
        "test_frontend_insecure_fallback.py::test_condition_is_removed_when_the_mode_is_reverted",
        "test_frontend_insecure_fallback.py::test_fallback_port_lets_every_client_in[expired certificate]",
        "test_frontend_insecure_fallback.py::test_fallback_port_lets_every_client_in[no certificate]",
        "test_frontend_insecure_fallback.py::test_fallback_port_lets_every_client_in[untrusted certificate]",
    ],
    "fallback-without-cert-request": [
        "test_frontend_insecure_fallback.py::test_backend_is_told_what_was_verified[expired certificate]",
        "test_frontend_insecure_fallback.py::test_backend_is_told_what_was_verified[untrusted certificate]",
        "test_frontend_insecure_fallback.py::test_backend_is_told_what_was_verified[valid certificate]",
        "test_frontend_insecure_fallback.py::test_fallback_port_lets_every_client_in[*]",
    ],
    "keep-client-identity-headers": [
        "test_frontend_default.py::test_backend_is_told_the_verified_identity",
        "test_frontend_insecure_fallback.py::test_client_cannot_forge_the_verification_result[*]",
    ],
    "report-fallback-as-verified": [
        "test_frontend_insecure_fallback.py::test_backend_is_told_what_was_verified[expired certificate]",
        "test_frontend_insecure_fallback.py::test_backend_is_told_what_was_verified[untrusted certificate]",
        "test_frontend_insecure_fallback.py::test_client_cannot_forge_the_verification_result[untrusted certificate]",
    ],
    "no-insecure-condition": [
        "test_frontend_insecure_fallback.py::test_condition_is_removed_when_the_mode_is_reverted",
        "test_frontend_insecure_fallback.py::test_gateway_reports_insecure_frontend_validation_mode",
    ],
    "stale-insecure-condition": [
        "test_frontend_insecure_fallback.py::test_condition_is_removed_when_the_mode_is_reverted",
    ],
    "stale-observed-generation": [
        "test_frontend_insecure_fallback.py::test_condition_is_removed_when_the_mode_is_reverted",
        "test_backend_tls_policy_status.py::test_observed_generation_follows_the_spec",
    ],
    # Every negative check first shows a valid client getting through on the same listener
    # (a rejection means nothing on a listener that rejects everyone), so a gateway that
    # trusts no client CA fails them all.
    "distrust-client-ca": [
        "test_frontend_default.py::test_backend_is_told_the_verified_identity",
        "test_frontend_default.py::test_*_is_rejected[*]",
        "test_frontend_default.py::test_valid_client_certificate_is_accepted[*]",
        "test_frontend_insecure_fallback.py::test_backend_is_told_what_was_verified[valid certificate]",
        "test_frontend_insecure_fallback.py::test_condition_is_removed_when_the_mode_is_reverted",
        "test_frontend_insecure_fallback.py::test_default_port_still_rejects_unverified_clients[*]",
        "test_frontend_per_port.py::test_default_ca_client_is_*",
        "test_frontend_per_port.py::test_per_port_ca_client_is_*",
        "test_frontend_per_port.py::test_no_client_certificate_is_rejected_on_both_ports[*]",
    ],
    "validate-http-listeners": [
        "test_frontend_per_port.py::test_http_listener_is_not_affected_by_frontend_validation",
    ],
    "report-valid-ca-unresolved": [
        "test_frontend_default.py::test_listeners_resolve_the_ca_reference",
    ],
    # Backend TLS. A check that a backend is refused first shows its sibling getting
    # through, so a fault that breaks every verified connection fails the refusals too.
    "backend-skip-hostname-verification": [
        "test_backend_tls_in_cluster.py::test_hostname_not_in_the_backend_certificate_is_refused[*]",
        "test_backend_tls_in_cluster.py::test_subject_alt_name_mismatch_is_refused[*]",
    ],
    "backend-ignore-subject-alt-names": [
        "test_backend_tls_in_cluster.py::test_subject_alt_name_match_is_accepted[hostname-not-in-certificate]",
        "test_backend_tls_in_cluster.py::test_subject_alt_name_mismatch_is_refused[*]",
    ],
    "backend-skip-chain-verification": [
        "test_backend_tls_external.py::test_ca_refs_do_not_fall_back_to_system_roots",
        "test_backend_tls_external.py::test_self_signed_external_certificate_is_refused",
        "test_backend_tls_in_cluster.py::test_certificate_from_another_ca_is_refused[*]",
        "test_backend_tls_in_cluster.py::test_expired_backend_certificate_is_refused",
    ],
    # The CA refs are private CAs, so every check that needs them to verify fails; the
    # one that only this fault lets through is test_ca_refs_do_not_fall_back_to_system_roots.
    "backend-trust-system-roots": [
        "test_backend_client_certificate.py::test_backend_sees_the_gateway_client_certificate[*]",
        "test_backend_tls_external.py::test_ca_refs_do_not_fall_back_to_system_roots",
        "test_backend_tls_in_cluster.py::test_*",
        "test_backend_tls_policy_status.py::test_ca_configmap_changes_are_reconciled",
        "test_backend_tls_policy_status.py::test_name_decides_between_policies_of_the_same_age",
        "test_backend_tls_policy_status.py::test_observed_generation_follows_the_spec",
        "test_backend_tls_policy_status.py::test_older_policy_wins_a_conflict",
    ],
    "backend-plaintext-fallback": [
        "test_backend_tls_policy_status.py::test_invalid_ca_certificate_ref[*-plaintext-backend]",
        "test_backend_tls_policy_status.py::test_invalid_kind_ca_ref[plaintext-backend]",
        "test_backend_tls_policy_status.py::test_unknown_well_known_ca_certificates_is_invalid[plaintext-backend]",
    ],
    "backend-fail-open": [
        "test_backend_tls_policy_status.py::test_ca_configmap_changes_are_reconciled",
        "test_backend_tls_policy_status.py::test_invalid_ca_certificate_ref[*]",
        "test_backend_tls_policy_status.py::test_invalid_kind_ca_ref[*]",
        "test_backend_tls_policy_status.py::test_unknown_well_known_ca_certificates_is_invalid[*]",
    ],
    # Every check of the backend's SNI where the client's Host is not the policy hostname.
    "backend-sni-from-host": [
        "test_backend_tls_external.py::test_system_roots_trust_a_publicly_issued_certificate",
        "test_backend_tls_in_cluster.py::test_https_listener_reencrypts_with_the_policy_hostname_as_sni",
        "test_backend_tls_in_cluster.py::test_policy_with_section_name_applies_to_its_port_only",
        "test_backend_tls_in_cluster.py::test_section_policy_and_whole_service_policy_coexist",
        "test_backend_tls_in_cluster.py::test_subject_alt_name_match_is_accepted[*]",
        "test_backend_tls_policy_status.py::test_ca_configmap_changes_are_reconciled",
        "test_backend_tls_policy_status.py::test_name_decides_between_policies_of_the_same_age",
        "test_backend_tls_policy_status.py::test_observed_generation_follows_the_spec",
        "test_backend_tls_policy_status.py::test_older_policy_wins_a_conflict",
    ],
    "omit-backend-client-cert": [
        "test_backend_client_certificate.py::test_backend_sees_the_gateway_client_certificate[*]",
    ],
    "report-client-certificate-ref-resolved": [
        "test_backend_client_certificate.py::test_invalid_client_certificate_ref_is_reported_and_not_presented[*]",
    ],
    "ignore-section-name": [
        "test_backend_tls_in_cluster.py::test_policy_with_section_name_applies_to_its_port_only",
        "test_backend_tls_in_cluster.py::test_section_policy_and_whole_service_policy_coexist",
        "test_backend_tls_policy_status.py::test_section_name_of_no_port_is_target_not_found",
    ],
    "reverse-policy-conflict-order": [
        "test_backend_tls_policy_status.py::test_name_decides_between_policies_of_the_same_age",
        "test_backend_tls_policy_status.py::test_older_policy_wins_a_conflict",
    ],
}

#: Scenario tests that run only with an option the selfcheck cannot give (they need the
#: internet), with that option: skipped in the child runs, exempt from "can fail".
OPT_IN: dict[str, str] = {
    "test_backend_tls_external.py::test_real_external_host_*": "--external-backend-host",
}

#: Faults whose scenarios are not written yet, with the issue that brings them. A fault
#: here is not run; the list must only shrink.
NOT_YET_COVERED: dict[str, str] = {
    "fail-open-invalid-ca": "frontend hardening scenarios (invalid CA references)",
    "ignore-ca-rotation": "frontend hardening scenarios (rotation)",
    "ignore-pinning": "frontend hardening scenarios (SAN and hash pinning)",
}
