package io.trainguard.guard.model;

public record AuditFinding(String code, Severity severity, String message) {
}
