/**
 * Application services: one small class per workflow that needs more than one subsystem (the
 * engine in {@code guard/}, the checkpoint registry, the tensor inspector, the fault ledger).
 * The gRPC and REST adapters call one method here and only translate; plain Java, wired in
 * {@code config/ServiceWiring}.
 */
package io.trainguard.service;
