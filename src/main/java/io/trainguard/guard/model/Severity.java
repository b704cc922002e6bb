package io.trainguard.guard.model;

public enum Severity {
    INFO,
    WARNING,
    ERROR,
    CRITICAL
}
