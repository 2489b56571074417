import { Component } from "react";
import type { ErrorInfo, ReactNode } from "react";

interface State {
  error: Error | null;
}

/** A failure while drawing a page shows in words, with a way back, never a blank page. */
export class ErrorBoundary extends Component<{ children: ReactNode; resetKey?: string }, State> {
  state: State = { error: null };

  static getDerivedStateFromError(error: Error): State {
    return { error };
  }

  componentDidUpdate(previous: { resetKey?: string }) {
    if (previous.resetKey !== this.props.resetKey && this.state.error) this.setState({ error: null });
  }

  componentDidCatch(error: Error, info: ErrorInfo) {
    console.error("console page failed", error, info.componentStack);
  }

  render() {
    if (this.state.error) {
      return (
        <div className="notice notice-error" role="alert">
          <strong>This page failed: </strong>
          {this.state.error.message}{" "}
          <a href="#/models">Back to the models</a>
        </div>
      );
    }
    return this.props.children;
  }
}
