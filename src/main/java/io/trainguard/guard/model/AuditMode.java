package io.trainguard.guard.model;

public enum AuditMode {
    OFF,
    WARN,
    REFUSE
}
