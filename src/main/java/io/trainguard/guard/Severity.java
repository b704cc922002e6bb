package io.trainguard.guard;

public enum Severity {
    INFO,
    WARNING,
    ERROR,
    CRITICAL
}
