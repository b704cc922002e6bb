package io.trainguard.guard;

public enum AuditMode {
    OFF,
    WARN,
    REFUSE
}
