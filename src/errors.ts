/**
 * The one error type that reaches HTTP clients. `message` is the public text (Hatch's wording where
 * Hatch has one); anything internal stays in `cause` and only goes to logs.
 */
export class AppError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly extra: { headers?: Record<string, string>; code?: string; cause?: unknown } = {},
  ) {
    super(message);
    this.name = "AppError";
  }
}

export const notFound = () => new AppError(404, "not found");
