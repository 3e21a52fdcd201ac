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
        "test_frontend_bad_client_certs.py::test_bad_client_certificate_is_rejected[expired]",
        "test_frontend_bad_client_certs.py::test_bad_client_certificate_is_rejected[intermediate not sent]",
        "test_frontend_bad_client_certs.py::test_bad_client_certificate_is_rejected[not yet valid]",
        "test_frontend_bad_client_certs.py::test_bad_client_certificate_is_rejected[server-auth-only EKU]",
        "test_frontend_bad_client_certs.py::test_bad_client_certificate_is_rejected[untrusted CA]",
        "test_frontend_bad_client_certs.py::test_chain_deeper_than_the_limit_is_rejected",
        "test_frontend_ca_sources.py::test_ca_in_a_secret",
        "test_frontend_ca_sources.py::test_cross_namespace_ca_follows_the_reference_grant",
        "test_frontend_invalid_ca.py::test_valid_ca_still_works_next_to_an_invalid_one",
        "test_frontend_misdirected.py::test_coalesced_connection_cannot_reach_a_stricter_listener",
        "test_frontend_pinning.py::test_other_certificate_hash_is_rejected",
        "test_frontend_pinning.py::test_other_san_from_the_trusted_ca_is_rejected[*]",
        "test_frontend_pinning.py::test_pinning_with_per_port_validation",
        "test_frontend_pinning.py::test_san_and_hash_pins_must_both_match[*]",
        "test_frontend_pinning.py::test_san_outside_several_allowed_is_rejected",
        "test_frontend_rotation.py::test_replacing_the_ca_bundle_takes_effect",
    ],
    "accept-no-client-cert": [
        "test_frontend_default.py::test_no_client_certificate_is_rejected[*]",
        "test_frontend_insecure_fallback.py::test_condition_is_removed_when_the_mode_is_reverted",
        "test_frontend_insecure_fallback.py::test_default_port_still_rejects_unverified_clients[no certificate]",
        "test_frontend_per_port.py::test_no_client_certificate_is_rejected_on_both_ports[*]",
        "test_frontend_bad_client_certs.py::test_bad_client_certificate_is_rejected[no certificate]",
        "test_frontend_invalid_ca.py::test_fixing_the_reference_clears_the_conditions_and_restores_traffic",
        "test_frontend_invalid_ca.py::test_valid_ca_still_works_next_to_an_invalid_one",
        "test_frontend_rotation.py::test_replacing_the_listener_certificate_takes_effect",
    ],
    "accept-expired-client-cert": [
        "test_frontend_default.py::test_expired_client_certificate_is_rejected[*]",
        "test_frontend_insecure_fallback.py::test_backend_is_told_what_was_verified[expired certificate]",
        "test_frontend_bad_client_certs.py::test_bad_client_certificate_is_rejected[expired]",
        "test_frontend_bad_client_certs.py::test_bad_client_certificate_is_rejected[not yet valid]",
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
        "test_frontend_invalid_ca.py::test_invalid_reference_is_reported[*]",
        "test_frontend_invalid_ca.py::test_invalid_reference_is_reported_next_to_a_valid_one",
        "test_frontend_invalid_ca.py::test_listener_without_a_valid_ca_fails_closed[*]",
        "test_frontend_invalid_ca.py::test_listener_without_a_valid_ca_is_not_accepted[*]",
        "test_frontend_pinning.py::test_pinning_with_per_port_validation",
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
        "test_frontend_rotation.py::test_observed_generation_follows_every_spec_change",
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
        "test_frontend_bad_client_certs.py::*",
        "test_frontend_ca_sources.py::test_ca_in_a_secret",
        "test_frontend_ca_sources.py::test_cross_namespace_ca_follows_the_reference_grant",
        "test_frontend_invalid_ca.py::test_fixing_the_reference_clears_the_conditions_and_restores_traffic",
        "test_frontend_invalid_ca.py::test_listener_without_a_valid_ca_fails_closed[*]",
        "test_frontend_invalid_ca.py::test_valid_ca_still_works_next_to_an_invalid_one",
        "test_frontend_invalid_ca.py::test_valid_reference_resolves",
        "test_frontend_misdirected.py::*",
        "test_frontend_pinning.py::*",
        "test_frontend_rotation.py::*",
    ],
    "validate-http-listeners": [
        "test_frontend_per_port.py::test_http_listener_is_not_affected_by_frontend_validation",
    ],
    "report-valid-ca-unresolved": [
        "test_frontend_default.py::test_listeners_resolve_the_ca_reference",
        "test_frontend_ca_sources.py::test_ca_in_a_secret",
        "test_frontend_ca_sources.py::test_cross_namespace_ca_follows_the_reference_grant",
        "test_frontend_invalid_ca.py::test_fixing_the_reference_clears_the_conditions_and_restores_traffic",
        "test_frontend_invalid_ca.py::test_invalid_reference_is_reported[*]",
        "test_frontend_invalid_ca.py::test_invalid_reference_is_reported_next_to_a_valid_one",
        "test_frontend_invalid_ca.py::test_valid_reference_resolves",
    ],
    "fail-open-invalid-ca": [
        "test_frontend_ca_sources.py::test_cross_namespace_ca_follows_the_reference_grant",
        "test_frontend_invalid_ca.py::test_fixing_the_reference_clears_the_conditions_and_restores_traffic",
        "test_frontend_invalid_ca.py::test_invalid_reference_is_reported[*]",
        "test_frontend_invalid_ca.py::test_listener_without_a_valid_ca_fails_closed[*]",
        "test_frontend_invalid_ca.py::test_listener_without_a_valid_ca_is_not_accepted[*]",
    ],
    "hide-partially-invalid-ca-refs": [
        "test_frontend_invalid_ca.py::test_invalid_reference_is_reported_next_to_a_valid_one",
    ],
    "ignore-ca-rotation": [
        "test_frontend_rotation.py::test_replacing_the_ca_bundle_takes_effect",
    ],
    "ignore-certificate-rotation": [
        "test_frontend_rotation.py::test_replacing_the_listener_certificate_takes_effect",
    ],
    "ignore-chain-depth": [
        "test_frontend_bad_client_certs.py::test_chain_deeper_than_the_limit_is_rejected",
    ],
    "ignore-misdirected-requests": [
        "test_frontend_misdirected.py::test_coalesced_connection_cannot_reach_a_stricter_listener",
        "test_frontend_misdirected.py::test_host_of_another_listener_is_misdirected[*]",
    ],
    "ignore-pinning": [
        "test_frontend_misdirected.py::test_coalesced_connection_cannot_reach_a_stricter_listener",
        "test_frontend_pinning.py::test_other_certificate_hash_is_rejected",
        "test_frontend_pinning.py::test_other_san_from_the_trusted_ca_is_rejected[*]",
        "test_frontend_pinning.py::test_pinning_with_per_port_validation",
        "test_frontend_pinning.py::test_san_and_hash_pins_must_both_match[*]",
        "test_frontend_pinning.py::test_san_outside_several_allowed_is_rejected",
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
}
