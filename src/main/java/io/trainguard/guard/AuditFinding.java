package io.trainguard.guard;

public record AuditFinding(String code, Severity severity, String message) {
}
