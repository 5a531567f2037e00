// Types of `embed.js`: an application's own page as a shell (a web frame of the host).
// The page's origin must be one of the host's `WebConfig::shell_origins`.

export interface EmbedOptions {
  /** The host's shell URL or origin, as `WebServer::url` gives it: `http://127.0.0.1:PORT`. */
  host: string;
  /** Where the extensions' iframes go (one per extension with a web renderer). */
  container: Element;
  /** The window whose `message` events carry the iframes' `ready` (default: `window`). */
  window?: Window;
  /** The WebSocket constructor (default: the global one). */
  WebSocket?: typeof WebSocket;
}

/** An extension's iframe was put in the container. */
export interface AddedDetail {
  extension: string;
  /** The extension's origin, `http://LABEL.localhost:PORT`. */
  origin: string;
  /** `sandbox="allow-scripts allow-same-origin"`, `src` its origin's `/`; style it freely. */
  iframe: HTMLIFrameElement;
}

/** What an extension's iframe says it is doing. */
export interface StatusDetail {
  extension: string;
  state: "connecting" | "connected" | "running" | "closed" | "lost";
  messagesIn: number;
  messagesOut: number;
}

export interface EmbeddedShellEventMap {
  /** The host said which frame this page is (first, before any `added`). */
  frame: CustomEvent<{ frame: number }>;
  added: CustomEvent<AddedDetail>;
  status: CustomEvent<StatusDetail>;
  /** The extension's iframe was taken out (it deactivated, or the frame is closing). */
  removed: CustomEvent<{ extension: string }>;
  /** The shell socket closed: the frame is gone, and every iframe was removed. */
  closed: CustomEvent<{ code: number; reason: string }>;
}

export class EmbeddedShell extends EventTarget {
  /** The frame this page is, once the `frame` event came. */
  readonly frame: number | undefined;
  /** Whether the socket has closed. */
  readonly closed: boolean;
  /** The extensions whose iframe is in the container now. */
  readonly extensions: ReadonlyMap<string, { origin: string; iframe: HTMLIFrameElement }>;
  /** Closes the shell socket: the host closes the frame, and the iframes go. */
  close(): void;
  addEventListener<K extends keyof EmbeddedShellEventMap>(
    type: K,
    listener: (event: EmbeddedShellEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof EmbeddedShellEventMap>(
    type: K,
    listener: (event: EmbeddedShellEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject, options?: boolean | EventListenerOptions): void;
}

/** Connects the page as a shell of the host at `options.host`. */
export function embed(options: EmbedOptions): EmbeddedShell;
